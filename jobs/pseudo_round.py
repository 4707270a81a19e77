"""Run the next round of a campaign (ingesting its sources first if needed), e.g. on a cluster:
``ray job submit --working-dir . -- python jobs/pseudo_round.py --config conf/demo.yaml --set storage.root=s3://…``.
Round 0 (the first teacher) runs first when it has not run yet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli


def run(args: argparse.Namespace) -> None:
    cli.run_campaign_job(args, max_rounds=None if args.all else 2)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--all", action="store_true", help="run every remaining round of the campaign")
    cli.main(run, p)
