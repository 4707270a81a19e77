"""Export a round's curated dataset (labelled ∪ selected pseudo-labels) with a datasheet:
``python jobs/export.py --round runs/demo/campaigns/demo/rounds/r001 --format webdataset --out exports/demo-r001``
(the same as ``fer-engine export``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("export", __doc__ or "")
