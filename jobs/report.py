"""Rebuild a finished round's ``report.html`` (and log it to the round's MLflow run), e.g.
``python jobs/report.py --round runs/demo/campaigns/demo/rounds/r001 --label-issues --set report.gallery_per_class=4``.
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
    from engine.products.report import rebuild_report

    print(rebuild_report(args.round, args.overrides, label_issues=args.label_issues), flush=True)


if __name__ == "__main__":
    p = cli.parser(
        __doc__ or "",
        config=False,
        set_help="override a value of the campaign's config.json, e.g. --set report.gallery_per_class=4",
    )
    p.add_argument("--round", required=True, help="round directory: <storage root>/campaigns/<name>/rounds/rNNN")
    p.add_argument("--label-issues", action="store_true", help="compute curation/label_issues.parquet first")
    cli.main(run, p)
