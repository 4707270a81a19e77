"""Ingest throughput: the Ray Data ingest stage vs a plain single-process loop (decode + hash + tar write).

Usage: python bench/ingest.py --n 5000 [--fer ../shared/data/fer2013] [--hash-shuffle]. Prints images/s of both and
their ratio. ``--hash-shuffle`` groups with Ray Data's default hash shuffle instead of the task-based sort shuffle the
stage uses (``engine.runtime.task_shuffle``), to measure what that choice saves.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import Config, IngestConfig, SourceConfig, StorageConfig
from engine.imaging import process_image
from engine.runtime import init_ray
from engine.sources import get_adapter, read_bytes
from engine.stages.base import StageContext
from engine.stages.ingest import IngestStage


def plain_loop(src: SourceConfig, out: Path, per_shard: int) -> int:
    rows = list(get_adapter(src).rows())
    policy, n, shard, tar = IngestConfig(), 0, 0, None
    for i, r in enumerate(rows):
        if i % per_shard == 0:
            if tar:
                tar.close()
            tar = tarfile.open(out / f"plain-{shard:06d}.tar", "w")  # noqa: SIM115 (one open tar per shard, closed above)
            shard += 1
        check = process_image(read_bytes(r.locator), policy)
        if check.reason is None and check.data is not None:
            info = tarfile.TarInfo(f"{r.key}.png")
            info.size = len(check.data)
            tar.addfile(info, io.BytesIO(check.data))
            n += 1
    if tar:
        tar.close()
    return len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--fer", default="../shared/data/fer2013")
    p.add_argument("--hash-shuffle", action="store_true", help="Ray Data default groupby shuffle (actors)")
    a = p.parse_args()
    if a.hash_shuffle:
        import contextlib

        import engine.runtime

        engine.runtime.task_shuffle = contextlib.nullcontext  # type: ignore[assignment]
    src = SourceConfig(name="bench", format="fer2013", path=a.fer, limit=a.n // 3)
    init_ray()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cfg = Config(storage=StorageConfig(root=os.path.join(d, "stage")), sources={src.name: src})
        res = IngestStage(StageContext(cfg, source=src.name)).execute()
        stage_s = time.perf_counter() - t0
        (Path(d) / "plain").mkdir()
        t0 = time.perf_counter()
        n = plain_loop(src, Path(d) / "plain", 1000)
        plain_s = time.perf_counter() - t0
    stage_ips, plain_ips = res.counts["inputs"] / stage_s, n / plain_s
    shuffle = "hash (Ray Data default)" if a.hash_shuffle else "sort (task_shuffle)"
    print(f"images: {res.counts['inputs']} (cpus: {os.cpu_count()}, groupby shuffle: {shuffle})")
    print(f"ingest stage (Ray Data, incl. dedup + leakage groupby): {stage_ips:8.1f} images/s  ({stage_s:.1f} s)")
    print(f"plain single-process loop (decode + hash + tar):       {plain_ips:8.1f} images/s  ({plain_s:.1f} s)")
    print(f"ratio stage / plain: {stage_ips / plain_ips:.2f}")


if __name__ == "__main__":
    main()
