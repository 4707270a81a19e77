"""Multi-node on one machine (``ray.cluster_utils.Cluster``: a head for the driver and three worker nodes of 1 CPU,
driven by tests/integration/simulated_cluster.py in its own process): ingest, score, threshold and select give the
single-node run's files byte for byte, work is placed on more than one node (read back from Ray's state API), Ray
Train runs one worker per node, and a worker node removed in the middle of ingest and of scoring still leaves every
row exactly once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO, TINY_CAMPAIGN_SETS
from tests.integration.processes import tiny_sets

SOURCE = "sources/fer2013"
ROUND1 = "campaigns/demo/rounds/r001"


def _drive(mode: str, roots: list[Path], sets: list[str], teacher: dict, log: Path) -> dict:
    cmd = [sys.executable, "-m", "tests.integration.simulated_cluster", mode, *map(str, roots)]
    cmd += [a for s in sets for a in ("--set", s)] + ["--teacher", json.dumps(teacher)]
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=fh, text=True, timeout=900)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}); its log: {log.read_text()[-4000:]}"
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    log.with_suffix(".json").write_text(line.removeprefix("RESULT "))  # kept for a failing run
    return json.loads(line.removeprefix("RESULT "))


def _files(d: Path) -> dict[str, bytes]:
    """The data files under ``d`` (a stage's outputs without its ``_SUCCESS.json``, which records timings)."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != "_SUCCESS.json"
    }


def _nodes(placed: dict[str, list[str]], name: str) -> set[str]:
    return {node for node, names in placed.items() if any(name in n for n in names)}


def _round1_teacher(root: Path) -> dict:
    return json.loads((root / ROUND1 / "round.json").read_text())["teacher"]


def test_ingest_and_a_round_on_three_nodes_equal_the_single_node_run(tiny_campaign, fer2013_dir, tmp_path):
    ref = tiny_campaign.root
    root = tmp_path / "cluster"
    shutil.copytree(ref / "campaigns", root / "campaigns", symlinks=True)  # without sources/: ingest runs again
    shutil.rmtree(root / ROUND1)
    sets = [*tiny_sets(root, fer2013_dir, epochs=2), *TINY_CAMPAIGN_SETS, "curation.label_issues=false"]
    out = _drive("round", [root], [*sets, "train.num_workers=3"], _round1_teacher(ref), tmp_path / "round.log")

    assert _files(root / SOURCE) == _files(ref / SOURCE)
    for stage in ("score", "threshold", "select"):
        assert _files(root / ROUND1 / stage) == _files(ref / ROUND1 / stage), stage
    workers = set(out["worker_nodes"])
    assert len(_nodes(out["placed"]["ingest"], "_map_task") & workers) >= 2  # decode, dedup and shard tasks
    assert len(_nodes(out["placed"]["round"], "_map_task") & workers) >= 2  # shard reads, evaluation, reports
    assert len(_nodes(out["placed"]["round"], "MapWorker(MapBatches(PoolScorer))") & workers) > 0  # scoring actor
    assert _nodes(out["placed"]["round"], "RayTrainWorker") == workers  # one training worker per node


def test_a_node_removed_during_ingest_and_during_scoring_leaves_every_row_once(tiny_campaign, fer2013_dir, tmp_path):
    ref = tiny_campaign.root
    ingest_root, score_root = tmp_path / "ingest", tmp_path / "score"
    ingest_root.mkdir()
    shutil.copytree(ref / "sources", score_root / "sources", symlinks=True)
    shutil.copytree(ref / "campaigns", score_root / "campaigns", symlinks=True)
    shutil.rmtree(score_root / ROUND1 / "score")
    sets = [*tiny_sets(".", fer2013_dir, epochs=2), *TINY_CAMPAIGN_SETS, "score.num_actors=2", "score.batch_size=8"]
    out = _drive("faults", [ingest_root, score_root], sets, _round1_teacher(ref), tmp_path / "faults.log")

    ingest, score = out["removed"]
    assert ingest["running"] and set(ingest["running"]) <= {"_map_task"}  # a node with ingest tasks running
    assert score["running"] == ["MapWorker(MapBatches(PoolScorer))"]  # the node of a scoring actor
    assert _files(ingest_root / SOURCE) == _files(ref / SOURCE)
    assert _files(score_root / ROUND1 / "score") == _files(ref / ROUND1 / "score")
