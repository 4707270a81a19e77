"""Scale: ingest → score → threshold → select over N synthetic faces (bench/synth_faces.py), per stage: wall time,
images/s per core, peak RSS of the driver and of the largest Ray worker, the object store's peak use and spilled
bytes, and the number of files written.

The campaign: 300 real FER2013 faces per split are the labelled set and the eval splits; the N synthetic faces
(a flat folder) are the unlabelled pool, scored by a teacher of the demo's net (``vgg_fer``, random weights: the
same compute as a trained one) with the demo's score settings; a fixed threshold of 0 and no per-class cap, so
every pool row is selected (the heaviest selection; a random teacher passes no DTM threshold).
Each N runs in a fresh storage root under ``--work`` on a local Ray with every core. Results accumulate in
``docs/results/scale.json`` (one entry per N, the latest run) and the table in ``docs/results/scale.md``.

Usage: python bench/scale.py --n 10000 [--n 100000] [--work /tmp/scale] [--keep] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from bench.synth_faces import generate

psutil = __import__("psutil")  # Ray's vendored copy, on the path once ray is imported

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs/results"
STAGES = ("ingest", "score", "threshold", "select")


class Sampler:
    """Every ``every`` s: the driver's RSS, the largest RSS of a Ray worker process (``ray::`` in its title), the
    scoring actors' RSS and USS (their private memory: RSS also counts the object store's shared pages an actor has
    mapped) and the object store's bytes in use; keeps the peaks since the last :meth:`take` and, every
    ``timeline_every`` s, one timeline point (seconds since :meth:`take`, largest scorer RSS and USS, store MiB)."""

    SCORER = "PoolScorer"
    """What a scoring actor's process title contains (``ray::MapWorker(MapBatches(PoolScorer))``)."""

    def __init__(self, every: float = 0.5, timeline_every: float = 10.0) -> None:
        self.every, self.me = every, psutil.Process()
        self.timeline_every = timeline_every
        self.peak = dict.fromkeys(("driver_rss", "worker_rss", "scorer_rss", "scorer_uss", "store_used"), 0)
        self.timeline: list[list[float]] = []
        self._t0, self._next_point = time.perf_counter(), 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        n, store = 0, 0
        while not self._stop.wait(self.every):
            self._bump("driver_rss", self.me.memory_info().rss)
            worst, scorer_rss, scorer_uss = 0, 0, 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = p.info.get("cmdline") or []
                if not (cmd and cmd[0].startswith("ray::") and p.info.get("memory_info")):
                    continue
                worst = max(worst, p.info["memory_info"].rss)
                if self.SCORER in cmd[0]:
                    scorer_rss = max(scorer_rss, p.info["memory_info"].rss)
                    with contextlib.suppress(psutil.Error):
                        scorer_uss = max(scorer_uss, p.memory_full_info().uss)
            self._bump("worker_rss", worst)
            self._bump("scorer_rss", scorer_rss)
            self._bump("scorer_uss", scorer_uss)
            n += 1
            if n % 4 == 0:  # the store's stats are a gRPC call: every 2 s
                store, _ = store_stats()
                self._bump("store_used", store)
            t = time.perf_counter() - self._t0
            if t >= self._next_point and scorer_rss:
                self.timeline.append([round(t, 1), scorer_rss // 2**20, scorer_uss // 2**20, store // 2**20])
                self._next_point = t + self.timeline_every

    def _bump(self, k: str, v: int) -> None:
        self.peak[k] = max(self.peak[k], v)

    def take(self) -> tuple[dict[str, int], list[list[float]]]:
        """The peaks and the timeline since the last call; both start again."""
        out, timeline = dict(self.peak), self.timeline
        self.peak, self.timeline = dict.fromkeys(self.peak, 0), []
        self._t0, self._next_point = time.perf_counter(), 0.0
        return out, timeline

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def store_stats() -> tuple[int, int]:
    """(object store bytes in use, bytes spilled since start) over the cluster; (0, 0) when Ray cannot say."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        return int(reply.store_stats.object_store_bytes_used), int(reply.store_stats.spilled_bytes_total)
    except Exception:  # a private API: report nothing rather than fail the benchmark
        return 0, 0


def count_files(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d)) if d.exists() else 0


def run_one(n: int, work: Path, fer: Path, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    from bench.score import random_teacher
    from engine.config import ModelConfig, load_config
    from engine.models.checkpoint import checkpoint_fingerprint
    from engine.runtime import cluster_cpus, init_ray
    from engine.stages.base import StageContext, TeacherRef
    from engine.stages.ingest import IngestStage
    from engine.stages.partition import PartitionStage
    from engine.stages.score import ScoreStage, pool_size
    from engine.stages.select import SelectStage
    from engine.stages.threshold import ThresholdStage

    synth = work / f"synth-{n}"
    gen_s = generate(n, synth, fer=fer)
    root = work / f"root-{n}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ckpt = random_teacher(str(root / "teacher.pt"), ModelConfig(name="vgg_fer"))
    cfg = load_config(
        [REPO / "conf/demo.yaml"],
        [
            f"storage.root={root}",
            f"sources.fer2013.path={fer}",
            "sources.fer2013.limit=300",
            f"sources.synth.path={synth}",
            "sources.synth.format=flat_folder",
            "sources.synth.split=unlabelled",
            "campaign.name=scale",
            "campaign.unlabelled=[synth]",
            "campaign.max_unlabelled=null",
            f"campaign.teacher_checkpoint={ckpt}",
            # A random teacher passes no DTM threshold: every row passes and is selected, the heaviest select.
            "threshold.policy=fixed",
            "threshold.tau=0.0",
            "select.cap_multiple_of_labelled=null",
            *sets,
        ],
    )
    init_ray()
    cores = cluster_cpus()
    sampler = Sampler()
    rows: dict[str, Any] = {}
    _, spilled0 = store_stats()

    def measure(name: str, fn: Any, out_dir: Path, images: int) -> Any:
        sampler.take()
        t0 = time.perf_counter()
        res = fn()
        s = time.perf_counter() - t0
        _, spilled = store_stats()
        peaks, timeline = sampler.take()
        rows[name] = {
            "seconds": round(s, 2),
            "images": images,
            "images_per_s_per_core": round(images / s / cores, 1),
            **{k: v // 2**20 for k, v in peaks.items()},  # MiB
            "spilled_mib": (spilled - spilled0) // 2**20,
            "files": count_files(out_dir),
        }
        if timeline:
            rows[name]["timeline"] = timeline  # [s, scorer RSS MiB, scorer USS MiB, store MiB] every 10 s
        return res

    ctx = StageContext(cfg)
    ctx = ctx.with_result("ingest:fer2013", IngestStage(dataclasses.replace(ctx, source="fer2013")).execute())
    synth_ingest = IngestStage(dataclasses.replace(ctx, source="synth"))
    res = measure("ingest", synth_ingest.execute, Path(synth_ingest.out_dir), n)
    ctx = ctx.with_result("ingest:synth", res)
    ctx = ctx.with_result("partition", PartitionStage(ctx).execute())
    ctx = dataclasses.replace(ctx, round=1, teacher=TeacherRef((ckpt,), checkpoint_fingerprint(ckpt), -1))
    pool = int(res.counts.get("kept", n))
    for cls in (ScoreStage, ThresholdStage, SelectStage):
        stage = cls(ctx)
        result = measure(stage.name, stage.execute, Path(stage.out_dir), pool)
        ctx = ctx.with_result(stage.name, result)
    sampler.stop()
    ray.shutdown()
    return {
        "n": n,
        "date": time.strftime("%Y-%m-%d"),
        "pool": pool,
        "cores": cores,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "synth_seconds": round(gen_s, 1),
        "score_actors": pool_size(cfg.score, cores, 0),
        "stages": rows,
        "quarantined": res.counts.get("quarantined"),
    }


def table(results: dict[str, Any]) -> str:
    head = (
        "| N | stage | s | img/s/core | driver RSS MiB | worker RSS MiB | scorer RSS / USS MiB | store peak MiB | "
        "spilled MiB | files |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for n in sorted(results, key=int):
        r = results[n]
        for st in STAGES:
            x = r["stages"][st]
            rate = f"{x['images_per_s_per_core']:,.0f}" if x["seconds"] >= 0.1 else "–"  # too short to time
            scorer = f"{x['scorer_rss']} / {x['scorer_uss']}" if st == "score" and "scorer_rss" in x else "–"
            lines.append(
                f"| {int(n):,} | {st} | {x['seconds']:.1f} | {rate} | {x['driver_rss']} | "
                f"{x['worker_rss']} | {scorer} | {x['store_used']} | {x['spilled_mib']} | {x['files']:,} |"
            )
    actors = "; ".join(
        f"{int(n):,}: {results[n].get('score_actors', '?')} ({results[n]['date']})" for n in sorted(results, key=int)
    )
    return (
        head + "\n".join(lines) + f"\n\nScoring actors (one torch thread each) per N, and the run's date: {actors}. "
        "Worker RSS is the largest of any Ray worker process; scorer RSS / USS are the scoring actors' (the largest "
        "of them): USS is their private memory, RSS adds the shared pages they have mapped (torch's libraries, object "
        "store pages). `timeline` in scale.json has the scorer's RSS, USS and the store every 10 s of scoring.\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, action="append", default=[])
    p.add_argument("--work", type=Path, default=Path("/tmp/fer-engine-scale"))
    p.add_argument("--fer", type=Path, default=REPO.parent / "shared/data/fer2013")
    p.add_argument("--keep", action="store_true", help="keep the storage roots (the synthetic faces are always kept)")
    p.add_argument("--table", action="store_true", help="only print and write the table of the stored results")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override (repeatable), e.g. score.store_mib_per_actor=0: the run is printed, not stored",
    )
    args = p.parse_args()
    from engine.logs import setup_logging

    setup_logging()
    store = RESULTS / "scale.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.set:  # an experiment: printed, never stored over the table's runs
        for n in args.n:
            run = run_one(n, args.work, args.fer.resolve(), tuple(args.set))
            print(json.dumps({"set": args.set, **run}, indent=1))
            if not args.keep:
                shutil.rmtree(args.work / f"root-{n}", ignore_errors=True)
        return
    for n in [] if args.table else args.n:
        results[str(n)] = run_one(n, args.work, args.fer.resolve())
        if not args.keep:
            shutil.rmtree(args.work / f"root-{n}", ignore_errors=True)
        store.write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    md = RESULTS / "scale.md"
    md.write_text(
        "# Scale: ingest → score → threshold → select over synthetic faces\n\n"
        "`python bench/scale.py --n N` (its docstring says what runs); the machine per N is in scale.json. RSS and\n"
        "store figures are peaks sampled every 0.5 s (2 s for the store), so a stage under a second shows 0.\n\n"
        + text
    )


if __name__ == "__main__":
    main()
