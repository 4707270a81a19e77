"""Single-bit flips in a parquet file, read back by the engine's reader: how many change values silently, with and
without page checksums (``engine.io.fs.PARQUET_WRITE``). The stage's sha256 catches every flip on the skip path;
this measures what the reader alone catches when a file is read.

    python bench/parquet_flips.py runs/demo/campaigns/demo/rounds/r001/score/part-fer2013-000001.parquet --flips 200
"""

from __future__ import annotations

import argparse
import io
import platform
import random

import pyarrow as pa
import pyarrow.parquet as pq

from engine.io import fs


def outcomes(data: bytes, original, flips: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    out = {"error on read": 0, "same values": 0, "changed silently": 0}
    for _ in range(flips):
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            table = pq.read_table(io.BytesIO(bytes(b)), page_checksum_verification=True)
        except Exception:  # any refusal to read is the outcome counted
            out["error on read"] += 1
            continue
        out["same values" if table.equals(original) else "changed silently"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parquet", help="a committed parquet file (score, manifest or selection part)")
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    table = pq.read_table(a.parquet)
    print(f"{a.parquet}: {table.num_rows} rows, {table.num_columns} columns; {a.flips} single-bit flips each")
    print(f"machine: {platform.machine()} {platform.system()}, pyarrow {pa.__version__}")
    for label, checksum in (("without page checksums", False), ("with page checksums", True)):
        buf = io.BytesIO()
        pq.write_table(table, buf, **{**fs.PARQUET_WRITE, "write_page_checksum": checksum})
        res = outcomes(buf.getvalue(), table, a.flips, a.seed)
        print(f"  {label:24s} " + ", ".join(f"{k} {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
