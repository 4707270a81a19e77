"""Training across worker counts: the demo's round 0 (vgg_fer on 2,000 FER2013 labels) trained on one node with
one Ray Train worker for two seeds, then on a simulated cluster (``ray.cluster_utils.Cluster``: a 0-CPU head and
``--nodes`` worker nodes of 1 CPU each, all on this machine) with one worker per node (DDP), seed 0.

Training is not reproducible across worker counts (each worker draws its own batches; ``train.batch_size`` is per
worker, so N workers take 1/N of the optimiser steps at N times the batch, with the same learning rate). What is
compared: the cluster run's val/test macro-F1 against the spread of the single-node seeds. Every run reuses the
ingested sources of the first (ingest on a cluster is checked byte for byte in tests/integration/test_cluster.py).

Usage: python bench/cluster_train.py [--work /tmp/fer-engine-cluster-train] [--nodes 3] [--seeds 0 1]
       [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ROUND0 = ["campaign.rounds=0"]


def run(root: Path, sets: list[str], *, nodes: int = 0) -> dict[str, Any]:
    """Round 0 of conf/demo.yaml in ``root`` on a fresh local Ray (``nodes`` = 0) or a simulated cluster; returns
    round 0's record of campaign.json plus the wall time."""
    import ray

    from engine.campaign import run_campaign
    from engine.config import load_config
    from engine.runtime import init_ray

    cfg = load_config([REPO / "conf/demo.yaml"], [*ROUND0, *sets, f"storage.root={root}"])
    cluster = None
    if nodes:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        ray.data.DataContext.get_current().enable_progress_bars = False
    else:
        init_ray()
    try:
        t0 = time.perf_counter()
        state = run_campaign(cfg)
        return {**state["rounds"]["0"], "seconds": time.perf_counter() - t0}
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/fer-engine-cluster-train"))
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", action="append", default=[], dest="sets")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from engine.logs import setup_logging

    setup_logging()
    shutil.rmtree(a.work, ignore_errors=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    first: Path | None = None
    for seed in a.seeds:
        root = a.work / f"single_s{seed}"
        if first is not None:
            shutil.copytree(first / "sources", root / "sources")
        rows.append((f"1 node, 1 worker, seed {seed}", run(root, [*a.sets, f"train.seed={seed}"])))
        first = first or root
    assert first is not None
    root = a.work / "cluster"
    shutil.copytree(first / "sources", root / "sources")
    # torch threads 1: the simulated nodes share this machine's cores (a real node would use its own).
    sets = [*a.sets, f"train.seed={a.seeds[0]}", f"train.num_workers={a.nodes}", "train.torch_threads=1"]
    rows.append((f"{a.nodes} nodes, {a.nodes} workers (DDP), seed {a.seeds[0]}", run(root, sets, nodes=a.nodes)))

    print(f"\nmachine: {os.cpu_count()} cores; demo round 0 (conf/demo.yaml); extra sets: {a.sets or 'none'}")
    print("| run | val macro-F1 | test macro-F1 | wall s |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['val_macro_f1']:.4f} | {r['test_macro_f1']:.4f} | {r['seconds']:.0f} |")
    single = [r for _, r in rows[:-1]]
    cl = rows[-1][1]
    for key in ("val_macro_f1", "test_macro_f1"):
        lo, hi = min(r[key] for r in single), max(r[key] for r in single)
        where = "inside" if lo <= cl[key] <= hi else "outside"
        print(f"{key}: single-node spread [{lo:.4f}, {hi:.4f}]; cluster {cl[key]:.4f}: {where}")


if __name__ == "__main__":
    main()
