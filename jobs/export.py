"""Export a round's curated dataset (labelled ∪ selected pseudo-labels) with a datasheet:
``python jobs/export.py --round runs/demo/campaigns/demo/rounds/r001 --format webdataset --out exports/demo-r001``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli
from engine.runtime import init_ray


def run(args: argparse.Namespace) -> None:
    init_ray()
    from engine.products.export import export_round
    from engine.stored import open_round

    sheet = export_round(open_round(args.round), args.format, args.out, overwrite=args.overwrite)
    total = sheet["counts"]["total"]
    print(
        f"exported {sheet['samples']:,} samples ({total['labelled']:,} labelled, {total['pseudo']:,} pseudo) "
        f"of {sheet['campaign']} r{sheet['round']:03d} as {sheet['format']} to {args.out}; see datasheet.md",
        flush=True,
    )


if __name__ == "__main__":
    from engine.products.export import FORMATS

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--round", required=True, help="round directory: <storage root>/campaigns/<name>/rounds/rNNN")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory (local path or URI); must be empty")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    cli.main(run, p)
