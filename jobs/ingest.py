"""Ingest sources into WebDataset shards with a manifest: ``python jobs/ingest.py --config conf/fer2013.yaml``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli
from engine.errors import ConfigError
from engine.runtime import init_ray
from engine.summary import print_ingest_summary


def run(args: argparse.Namespace) -> None:
    cfg = cli.load(args)
    names = args.source or list(cfg.sources)
    if not names:
        raise ConfigError("no sources configured: add a `sources:` section (see conf/fer2013.yaml) or --set one")
    for name in names:
        cfg.source(name)  # an unknown --source fails here, before Ray starts
    init_ray()
    from engine.stages.ingest import run_ingest

    for name in names:
        result = run_ingest(cfg, name)
        print_ingest_summary(name, result)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--source", action="append", help="ingest only this source (repeatable); default: all")
    cli.main(run, p)
