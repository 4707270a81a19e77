"""Ingest sources into WebDataset shards with a manifest: ``python jobs/ingest.py --config conf/fer2013.yaml``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli
from engine.runtime import init_ray
from engine.summary import print_ingest_summary


def run(args: argparse.Namespace) -> None:
    cfg = cli.load(args)
    init_ray()
    from engine.stages.ingest import run_ingest

    for name in args.source or list(cfg.sources):
        result = run_ingest(cfg, name)
        print_ingest_summary(name, result)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--source", action="append", help="ingest only this source (repeatable); default: all")
    cli.main(run, p)
