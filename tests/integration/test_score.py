"""Score stage at scale: an actor killed mid-run still yields each pool row exactly once; re-runs change nothing; a
small pool scored in the driver writes the same bytes as the actor pool."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.config import CampaignConfig, Config, IngestConfig, ModelConfig, ScoreConfig, SourceConfig, StorageConfig
from engine.io import fs
from engine.layout import CampaignLayout, SourceLayout
from engine.partition_rule import PartitionRule
from engine.stages.base import StageContext, StageResult, TeacherRef
from engine.stages.score import ScoreStage
from tests.fixtures import ingest_stage

SCORER_CLASS = "MapWorker(MapBatches(PoolScorer))"


@pytest.fixture(scope="module")
def scored_root(ray_local, fer2013_dir, tmp_path_factory) -> dict[str, Any]:
    """200 FER2013 rows per split in shards of 80 (3 shards hold Training rows), a tiny_cnn teacher, a pool rule."""
    import torch

    from engine.labels import get_label_space
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model

    root = tmp_path_factory.mktemp("score")
    src = SourceConfig(name="fer2013", format="fer2013", path=str(fer2013_dir), limit=200)
    ingest_stage(root, src, IngestConfig(samples_per_shard=80)).execute()
    torch.manual_seed(0)
    cfg, space = ModelConfig(name="tiny_cnn"), get_label_space("basic7")
    ckpt = str(root / "teacher.pt")
    fp = save_checkpoint(ckpt, create_model(cfg, len(space)), model_cfg=cfg, label_space=space)
    labelled = str(root / "labelled.parquet")
    fs.write_parquet(labelled, pa.table({"key": pa.array([], pa.string())}))
    manifest = pq.read_table(SourceLayout(str(root), "fer2013").manifest_dir)
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    pool = train.filter(pc.is_null(train["leak_with"]))
    return {
        "root": str(root),
        "ckpt": ckpt,
        "fp": fp,
        "rule": PartitionRule(0, ("fer2013",), (), 1.0, 1.0, labelled),
        "pool": sorted(pool["key"].to_pylist()),
        "pool_shards": dict(sorted((d["values"], d["counts"]) for d in pc.value_counts(pool["shard"]).to_pylist())),
    }


def _stage(env: dict[str, Any], campaign: str, delay_s: float = 0.0, in_process_rows: int = 0) -> ScoreStage:
    """Round 1's score stage of campaign ``campaign`` on the fixture's root, its partition rule committed by hand; on
    the actor pool unless ``in_process_rows`` covers the pool."""
    cfg = Config(
        storage=StorageConfig(root=env["root"]),
        score=ScoreConfig(batch_size=16, num_actors=1, cpus_per_actor=1.0, in_process_rows=in_process_rows),
        campaign=CampaignConfig(name=campaign),
    )
    lay = CampaignLayout(env["root"], campaign)
    if not fs.exists(lay.rule):
        fs.write_json(lay.rule, env["rule"].to_json())
    ctx = StageContext(
        cfg,
        round=1,
        upstream={"partition": StageResult("partition", "p" * 64)},
        teacher=TeacherRef((env["ckpt"],), env["fp"]),
    )
    return ScoreStage(ctx, batch_delay_s=delay_s)


def _score_dir(env: dict[str, Any], campaign: str) -> Path:
    return Path(CampaignLayout(env["root"], campaign).round(1).score_dir)


def _scorer_actors() -> list[dict[str, Any]]:
    import ray._private.state

    return [a for a in ray._private.state.actors().values() if a["ActorClassName"] == SCORER_CLASS]


def _kill_scorer_after_first_shard(out: Path, timeout_s: float = 300) -> dict[str, Any]:
    """Wait until one shard is committed and the scorer is still alive, then ``ray.kill`` it (Ray may restart it)."""
    import ray
    from ray._raylet import ActorID

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [a for a in _scorer_actors() if a["State"] == "ALIVE"]
        if alive and list(out.glob("part-*.parquet")):
            victim = alive[0]
            handle = ray._private.worker.global_worker.core_worker.get_actor_handle(
                ActorID.from_hex(victim["ActorID"])
            )
            ray.kill(handle, no_restart=False)
            return victim
        time.sleep(0.2)
    raise AssertionError("no scoring actor was alive after a shard committed; the run ended too soon to kill one")


def _hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "_SUCCESS.json"
    }


def test_killed_actor_every_pool_row_once_and_rerun_identical(scored_root, tmp_path):
    env = scored_root
    killed_dir = _score_dir(env, "killed")
    stage = _stage(env, "killed", delay_s=0.3)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = stage.execute()
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    victim = _kill_scorer_after_first_shard(killed_dir)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the score stage did not finish within 600 s after the kill"
    assert "error" not in box, repr(box.get("error"))
    restarted = [a for a in _scorer_actors() if a["ActorID"] == victim["ActorID"]]
    assert restarted and restarted[0]["NumRestarts"] >= 1  # the kill really hit a live scorer mid-run

    parts = sorted(killed_dir.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{s}.parquet" for s in env["pool_shards"]]
    assert len(parts) >= 2
    table = pq.ParquetDataset([str(p) for p in parts]).read(columns=["key", "probs"])
    keys = table["key"].to_pylist()
    assert len(keys) == len(set(keys)) == len(env["pool"]) == box["result"].counts["rows"]
    assert sorted(keys) == env["pool"]
    probs = np.asarray(table["probs"].combine_chunks().flatten()).reshape(len(keys), 7).astype(np.float64)
    assert np.abs(probs.sum(1) - 1).max() <= 1e-4

    # (b) a second run with the same fingerprint is skipped and touches nothing
    before = {p: p.stat().st_mtime_ns for p in killed_dir.rglob("*") if p.is_file()}
    again = _stage(env, "killed").execute()
    assert again.skipped
    assert {p: p.stat().st_mtime_ns for p in killed_dir.rglob("*") if p.is_file()} == before

    # a clean run without any kill writes byte-identical data files
    clean = _stage(env, "clean").execute()
    assert not clean.skipped
    assert _hashes(_score_dir(env, "clean")) == _hashes(killed_dir)

    # the pool scored in this process (score.in_process_rows): no actor, the driver's torch threads given back, the
    # same fingerprint and bytes as on the actor pool (one torch thread and the same per-row net either way)
    import torch

    actors, threads = len(_scorer_actors()), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = _stage(env, "here", in_process_rows=len(env["pool"])).execute()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len(_scorer_actors()) == actors
    assert (here.fingerprint, here.counts["rows"], here.counts["scored_now"]) == (
        clean.fingerprint,
        len(env["pool"]),
        len(env["pool"]),
    )
    assert _hashes(_score_dir(env, "here")) == _hashes(_score_dir(env, "clean"))
    assert not _stage(env, "one_too_many", in_process_rows=len(env["pool"]) - 1).here(len(env["pool"]))

    # a crash after one shard's part: only that shard is scored again, with identical bytes
    shard = list(env["pool_shards"])[1]
    (killed_dir / "stats" / f"{shard}.json").unlink()
    (killed_dir / "_SUCCESS.json").unlink()
    redo = _stage(env, "killed").execute()
    assert redo.counts["scored_now"] == env["pool_shards"][shard]
    assert _hashes(killed_dir) == _hashes(_score_dir(env, "clean"))
