"""Driver of the simulated-cluster tests (tests/integration/test_cluster.py): stages on a multi-node Ray cluster on
this one machine (``ray.cluster_utils.Cluster``: a head that holds the driver only, 0 CPUs and the dashboard for
Ray's state API, and ``--nodes`` worker nodes of 1 CPU each), optionally removing a worker node in the middle of a
stage. Runs as its own process: the suite's other tests share one local single-node Ray.

Modes (each prints one JSON line, ``RESULT {...}``, read by the test):

- ``round ROOT``: ``prepare`` (ingest, partition) then round 1 of the campaign in ROOT (the test leaves out what
  must run on the cluster); the JSON names the nodes each stage's tasks and actors ran on.
- ``faults INGEST_ROOT SCORE_ROOT``: ingest into INGEST_ROOT, removing the worker node of a running decode task once
  the first decoded part is committed; a replacement node joins; then round 1's score stage in SCORE_ROOT,
  removing the node of a scoring actor once the first shard is committed.

Usage: python -m tests.integration.simulated_cluster MODE ROOT [ROOT] --set key=value ...
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["round", "faults"])
    p.add_argument("roots", nargs="+")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--teacher", required=True, help="round 1's teacher: the 'teacher' record of its round.json")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Task states reach Ray's state API every 1 s by default: a task that just started may not show as RUNNING yet.
    os.environ.setdefault("RAY_task_events_report_interval_ms", "100")
    import ray
    from ray.cluster_utils import Cluster

    from engine.logs import setup_logging

    setup_logging()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.nodes)]
    os.environ["RAY_ADDRESS"] = cluster.address  # a cluster: the engine runs no work in the driver (local_work)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        out = _round(args) if args.mode == "round" else _faults(args, cluster, workers)
        out["worker_nodes"] = sorted(n.node_id for n in workers)
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _cfg(root: str, sets: list[str]) -> Any:
    from engine.config import load_config

    return load_config([REPO / "conf/demo.yaml"], [*sets, f"storage.root={root}"])


def _round(args: argparse.Namespace) -> dict[str, Any]:
    from engine.campaign import prepare
    from engine.round import run_round
    from engine.stages.base import TeacherRef

    cfg = _cfg(args.roots[0], args.sets)
    seen: set[str] = set()
    ctx = prepare(cfg)
    placed = {"ingest": _new_placements(seen)}
    teacher = TeacherRef.from_record(cfg.storage.root, json.loads(args.teacher))
    run_round(dataclasses.replace(ctx, round=1, teacher=teacher))
    placed["round"] = _new_placements(seen)
    return {"placed": placed}


def _faults(args: argparse.Namespace, cluster: Any, workers: list[Any]) -> dict[str, Any]:
    from engine.campaign import prepare
    from engine.layout import SourceLayout
    from engine.stages.base import StageContext, TeacherRef
    from engine.stages.ingest import IngestStage
    from engine.stages.score import ScoreStage

    seen: set[str] = set()
    removed = []
    # Listing parts of 50 rows: several decode tasks to lose one of (the outputs do not depend on the part size).
    cfg = _cfg(args.roots[0], [*args.sets, "ingest.list_chunk_rows=50"])
    decoded = SourceLayout(cfg.storage.root, "fer2013").dir + "/_work/decoded/part-*.parquet"
    ingest = IngestStage(StageContext(cfg, source="fer2013"))
    removed.append(_remove_during(ingest.execute, decoded, cluster, workers, kind="task"))
    placed = {"ingest": _new_placements(seen)}
    workers.append(cluster.add_node(num_cpus=1))  # Cluster.add_node works from the main thread only
    cluster.wait_for_nodes()

    cfg = _cfg(args.roots[1], args.sets)
    ctx = prepare(cfg)  # committed in SCORE_ROOT: both skipped
    teacher = TeacherRef.from_record(cfg.storage.root, json.loads(args.teacher))
    score = ScoreStage(dataclasses.replace(ctx, round=1, teacher=teacher), batch_delay_s=0.3)
    removed.append(_remove_during(score.execute, score.stats_path("*"), cluster, workers, kind="actor"))
    placed["score"] = _new_placements(seen)
    return {"placed": placed, "removed": removed}


def _remove_during(fn: Any, pattern: str, cluster: Any, workers: list[Any], *, kind: str) -> dict[str, Any]:
    """Run ``fn`` in a thread; once a file matches ``pattern``, remove (hard kill) the first worker node seen running
    one of its tasks (``kind="task"``) or scoring actors (``"actor"``). Returns ``{"node": the removed node's id, or
    None when fn ended before one was seen, "running": what ran there}`` and re-raises what ``fn`` raised."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = fn()
        except BaseException as exc:  # re-raised in the main thread
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    gone: dict[str, Any] = {"node": None, "running": []}
    while t.is_alive() and gone["node"] is None:
        time.sleep(0.05)
        if glob.glob(pattern):
            busy = _running(kind)
            victim = next((w for w in workers if w.node_id in busy), None)
            if victim is None:  # between tasks, or not reported yet: look again
                continue
            cluster.remove_node(victim, allow_graceful=False)  # from the main thread, as Cluster needs
            workers.remove(victim)
            gone = {"node": victim.node_id, "running": sorted(busy[victim.node_id])}
    t.join()
    if "exc" in box:
        raise box["exc"]
    return gone


def _running(kind: str) -> dict[str, list[str]]:
    """``{node id: names}`` of the running tasks, or of the alive Ray Data pool actors (``kind="actor"``)."""
    from ray.util.state import list_actors, list_tasks

    out: dict[str, list[str]] = defaultdict(list)
    if kind == "actor":
        for a in list_actors(detail=True, limit=10_000, raise_on_missing_output=False):
            if "MapWorker" in a.class_name and a.state == "ALIVE":
                out[a.node_id].append(a.class_name)
    else:
        for t in list_tasks(filters=[("state", "=", "RUNNING")], detail=True, limit=10_000):
            if t.type == "NORMAL_TASK":
                out[t.node_id].append(t.func_or_class_name)
    return out


def _new_placements(seen: set[str]) -> dict[str, list[str]]:
    """``{node id: sorted task / actor names}`` of the tasks and actors not seen by an earlier call."""
    from ray.util.state import list_actors, list_tasks

    out: dict[str, set[str]] = defaultdict(set)
    for t in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
        if t.task_id not in seen and t.node_id and t.type == "NORMAL_TASK":
            seen.add(t.task_id)
            out[t.node_id].add(t.func_or_class_name)
    for a in list_actors(detail=True, limit=10_000, raise_on_missing_output=False):
        if a.actor_id not in seen and a.node_id:
            seen.add(a.actor_id)
            out[a.node_id].add(a.class_name)
    return {k: sorted(v) for k, v in out.items()}


if __name__ == "__main__":
    main()
