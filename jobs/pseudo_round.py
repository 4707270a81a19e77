"""Run the next round of a campaign (ingesting its sources first if needed), e.g. on a cluster:
``ray job submit --working-dir . -- python jobs/pseudo_round.py --config conf/demo.yaml --set storage.root=s3://…``.
Round 0 (the first teacher) runs first when it has not run yet."""

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
    state = run_campaign(cfg, max_rounds=None if args.all else 2)
    print_campaign_summary(cfg, state)


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--all", action="store_true", help="run every remaining round of the campaign")
    cli.main(run, p)
