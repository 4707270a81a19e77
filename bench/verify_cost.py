"""What checksums cost: for every committed stage of a storage root, the time to sha256 its files (what a commit
adds and what ``storage.verify`` re-reads before a committed stage is used again) against the time the stage took.

Usage: python bench/verify_cost.py runs/demo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.fs as pafs

from engine.io import fs
from engine.io.checksums import digest_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root")
    args = p.parse_args()
    filesystem, base = fs.resolve(args.root)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    dirs = sorted(i.path.rsplit("/", 1)[0] for i in infos if i.base_name == "_SUCCESS.json")
    print(f"{'stage':<12} {'files':>6} {'MiB':>9} {'hash s':>8} {'MiB/s':>8} {'stage s':>9} {'ratio':>7}")
    tot_bytes = tot_hash = tot_stage = 0.0
    for d in dirs:
        marker = fs.read_json(d + "/_SUCCESS.json")
        t0 = time.perf_counter()
        files = digest_dir(d)
        dt = time.perf_counter() - t0
        size = sum(v[0] for v in files.values())
        stage_s = float(marker.get("seconds") or 0.0)
        tot_bytes, tot_hash, tot_stage = tot_bytes + size, tot_hash + dt, tot_stage + stage_s
        name = f"{marker.get('stage', '?')}"
        print(
            f"{name:<12} {len(files):>6} {size / 2**20:>9.1f} {dt:>8.3f} {size / 2**20 / max(dt, 1e-9):>8.0f} "
            f"{stage_s:>9.1f} {dt / max(stage_s, 1e-9):>7.1%}"
        )
    rate = tot_bytes / 2**20 / max(tot_hash, 1e-9)
    print(
        f"{'all':<12} {'':>6} {tot_bytes / 2**20:>9.1f} {tot_hash:>8.3f} {rate:>8.0f} "
        f"{tot_stage:>9.1f} {tot_hash / max(tot_stage, 1e-9):>7.1%}"
    )


if __name__ == "__main__":
    main()
