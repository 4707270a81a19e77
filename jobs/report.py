"""Rebuild a finished round's ``report.html`` (and log it to the round's MLflow run), e.g.
``python jobs/report.py --round runs/demo/campaigns/demo/rounds/r001 --label-issues --set report.gallery_per_class=4``
(the same as ``fer-engine report``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("report", __doc__ or "")
