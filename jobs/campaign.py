"""Run a whole campaign (ingest, partition, rounds 0..N): ``python jobs/campaign.py --config conf/demo.yaml``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli
from engine.runtime import init_ray


def run(args: argparse.Namespace) -> None:
    cfg = cli.load(args)
    from engine.campaign import completed, run_campaign
    from engine.summary import print_campaign_summary, print_nothing_to_do

    done = completed(cfg)
    if done is not None:  # nothing to do: no Ray, no MLflow, only campaign.json read
        print_nothing_to_do(cfg, done)
        return
    init_ray()
    state = run_campaign(cfg, max_rounds=args.max_rounds)
    print_campaign_summary(cfg, state)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--max-rounds", type=int, default=None, help="run at most this many new rounds, then stop")
    cli.main(run, p)
