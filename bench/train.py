"""Train-stage throughput against a plain torch loop over the same images, model, batch, augmentation and threads.

Usage:
    python bench/train.py [--n 5000] [--model small_cnn] [--batch-size 64] [--epochs 3] [--root DIR]
                          [--fer ../shared/data/fer2013] [--threads N] [--set train.cache_mb=0 ...]

Ingests the first FER2013 rows of each split into ``--root`` (a temporary folder by default; a committed ingest
there is reused), takes the first ``--n`` labelled Training rows as the labelled set, then times:

- the plain loop: one process, the images decoded once into a uint8 tensor, the engine's weak augmentation (random
  crop with reflect padding + flip) and normalisation, the same net (``engine.models.factory``), optimiser
  (``build_optimizer``), weighted cross-entropy and batch size, ``--threads`` torch threads (default: every core,
  the total the stage may use). Run before and after the stage; the ratio uses their mean.
- the stage: ``TrainStage.execute()`` on a fresh output folder with ``--epochs`` epochs. ``images/s`` is the
  stage's own per-epoch figure (supervised rows / epoch time) over the epochs after the first; start-up is the wall
  time from ``execute()`` to the first optimiser step (Ray Train controller and worker start, dataset planning,
  the in-memory decode); the rest is the end-to-end wall time.
- a tiny train stage (64 rows, one epoch): its whole wall time is fixed cost.

Prints the machine, both figures and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from engine.config import (
    CampaignConfig,
    Config,
    ModelConfig,
    SourceConfig,
    StorageConfig,
    TrainConfig,
    build,
    to_dict,
)
from engine.io import fs
from engine.layout import CampaignLayout, SourceLayout, join
from engine.partition_rule import PartitionRule
from engine.runtime import init_ray
from engine.stages.base import StageContext, StageResult
from engine.stages.ingest import IngestStage

SOURCE = "fer2013"


def labelled_table(root: str, fer: str, n: int) -> pa.Table:
    """Ingest FER2013 (enough rows per split for ``n`` Training rows) and return (key, shard, label) of the first
    ``n`` labelled Training rows in manifest order."""
    src = SourceConfig(
        name=SOURCE, format="fer2013", path=os.path.abspath(fer), label_space="basic7", limit=n + n // 4
    )
    cfg = Config(storage=StorageConfig(root=root), sources={SOURCE: src})
    IngestStage(StageContext(cfg, source=SOURCE)).execute()
    m = fs.read_parquet(SourceLayout(root, SOURCE).manifest_dir, columns=["key", "shard", "split", "label"])
    m = m.filter(pc.and_(pc.equal(m["split"], "train"), pc.greater_equal(m["label"], 0)))
    if m.num_rows < n:
        raise SystemExit(f"only {m.num_rows} labelled Training rows ingested; ask for fewer with --n")
    return m.slice(0, n).select(["key", "shard", "label"])


def decoded(root: str, table: pa.Table, model_cfg: ModelConfig) -> tuple[Any, Any]:
    """uint8 (N, C, S, S) pixels and int64 labels of ``table``'s rows, decoded once (the plain loop's input)."""
    import torch

    from engine.io.tars import read_images
    from engine.layout import shard_tar
    from engine.train.batch import images_to_uint8

    rows = table.to_pylist()
    blobs: dict[str, bytes] = {}
    for shard in sorted({r["shard"] for r in rows}):
        blobs.update(read_images(shard_tar(root, shard), {r["key"] for r in rows if r["shard"] == shard}))
    x8 = images_to_uint8([blobs[r["key"]] for r in rows], size=model_cfg.input_size, in_chans=model_cfg.in_chans)
    return x8, torch.tensor([r["label"] for r in rows], dtype=torch.int64)


def plain_loop(x8: Any, y: Any, model_cfg: ModelConfig, train_cfg: TrainConfig, epochs: int) -> float:
    """Images/s of a plain single-process loop (epochs after the first; the first warms the allocator)."""
    import torch

    from engine.models.factory import create_model
    from engine.train.batch import Augmenters, normalize_uint8
    from engine.train.losses import weighted_ce
    from engine.train.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model(model_cfg, 7)
    opt = build_optimizer(model, train_cfg)
    weak = Augmenters.default().weak
    bs, n = train_cfg.batch_size, x8.shape[0]
    w = torch.ones(bs)
    model.train()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = weighted_ce(model(normalize_uint8(weak(x8[idx]), model_cfg)), y[idx], w[: len(idx)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return n * len(steady) / sum(steady)


def run_stage(root: str, table_path: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """Execute a TrainStage on a fresh folder; returns wall time, start-up, steady images/s and the history."""
    from engine.stages.train import TrainStage

    campaign = CampaignLayout(root, f"train-{time.time_ns()}")
    cfg = Config(
        storage=StorageConfig(root=root),
        sources={SOURCE: SourceConfig(name=SOURCE, format="fer2013", path=root, label_space="basic7")},
        model=model_cfg,
        train=train_cfg,
        campaign=CampaignConfig(name=campaign.campaign, labelled=(SOURCE,)),
    )
    fs.write_json(campaign.rule, PartitionRule(0, (), (), 1.0, 1.0, table_path).to_json())  # the given labelled set
    stage = TrainStage(StageContext(cfg, round=0, upstream={"partition": StageResult("partition", "bench")}))
    out = stage.out_dir
    t0_wall, t0 = time.time(), time.perf_counter()
    stage.execute()
    wall = time.perf_counter() - t0
    history = _history(out)
    fs.remove(campaign.dir)
    steady = history[1:] or history
    return {
        "wall": wall,
        "startup": float(history[0]["first_step_at"]) - t0_wall,
        "images_per_s": sum(r["images"] for r in steady) / sum(r["seconds"] for r in steady),
        "threads": history[0].get("threads"),
        "in_memory": history[0].get("in_memory"),
        "epoch_seconds": [round(float(r["seconds"]), 2) for r in history],
    }


def _history(out: str) -> list[dict[str, Any]]:
    """The per-epoch records of the stage's newest Ray Train checkpoint under ``out``."""
    import json

    from engine.train.state import HISTORY_FILE

    files = sorted(Path(out).rglob(HISTORY_FILE), key=lambda p: p.stat().st_mtime)
    return list(json.loads(files[-1].read_text()))


def bench(a: argparse.Namespace, root: str) -> None:
    import torch

    t0 = time.perf_counter()
    table = labelled_table(root, a.fer, a.n)
    path = join(root, "bench", f"labelled-{a.n}.parquet")
    fs.write_parquet(path, table)
    tiny_path = join(root, "bench", "labelled-64.parquet")
    fs.write_parquet(tiny_path, table.slice(0, 64))
    print(f"setup (ingest + labelled table): {time.perf_counter() - t0:.1f} s, not timed below")

    model_cfg = build(ModelConfig, {"name": a.model}, where="bench", prefix="model.")
    sets = dict(kv.split("=", 1) for kv in a.set)
    train_dict = {**to_dict(TrainConfig()), "epochs": a.epochs, "batch_size": a.batch_size, "optimizer": "sgd"}
    for k, v in sets.items():
        train_dict[k.removeprefix("train.")] = yaml.safe_load(v)
    train_cfg = build(TrainConfig, train_dict, where="bench", prefix="train.")
    threads = a.threads or os.cpu_count() or 1

    x8, y = decoded(root, table, model_cfg)
    torch.set_num_threads(threads)
    plain_a = plain_loop(x8, y, model_cfg, train_cfg, a.epochs)
    stage = run_stage(root, path, model_cfg, train_cfg)
    torch.set_num_threads(threads)
    plain_b = plain_loop(x8, y, model_cfg, train_cfg, a.epochs)
    plain = (plain_a + plain_b) / 2
    tiny_cfg = build(TrainConfig, {**train_dict, "epochs": 1}, where="bench", prefix="train.")
    tiny = run_stage(root, tiny_path, model_cfg, tiny_cfg)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; load avg "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"images: {a.n} labelled FER2013 Training faces; model {a.model}; batch {a.batch_size}; weak augmentation; "
        f"{a.epochs} epochs (images/s over epochs 2..{a.epochs})"
    )
    print(
        f"train stage: {stage['images_per_s']:8.1f} images/s (worker torch threads {stage['threads']}, in memory "
        f"{stage['in_memory']}, epoch seconds {stage['epoch_seconds']})"
    )
    print(f"plain loop:  {plain:8.1f} images/s ({threads} torch threads; before {plain_a:.1f}, after {plain_b:.1f})")
    print(f"ratio stage / plain: {stage['images_per_s'] / plain:.2f}")
    print(
        f"stage start-up (execute() to the first optimiser step): {stage['startup']:.1f} s; end to end "
        f"{stage['wall']:.1f} s"
    )
    print(f"tiny train stage (64 rows, 1 epoch), end to end: {tiny['wall']:.1f} s (start-up {tiny['startup']:.1f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="labelled FER2013 Training images")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="plain loop torch threads (default: all cores)")
    p.add_argument("--set", action="append", default=[], help="train.KEY=VALUE for the stage (e.g. cache_mb=0)")
    p.add_argument("--root", default=None, help="storage root (default: a temporary folder, deleted afterwards)")
    p.add_argument("--fer", default="../shared/data/fer2013")
    a = p.parse_args()
    init_ray(num_cpus=os.cpu_count())
    if a.root:
        bench(a, a.root)
        return
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        bench(a, d)


if __name__ == "__main__":
    main()
