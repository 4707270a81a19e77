"""Run a whole campaign (ingest, partition, rounds 0..N): ``python jobs/campaign.py --config conf/demo.yaml``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli


def run(args: argparse.Namespace) -> None:
    cli.run_campaign_job(args, max_rounds=args.max_rounds)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--max-rounds", type=int, default=None, help="run at most this many new rounds, then stop")
    cli.main(run, p)
