"""Run a whole campaign (ingest, partition, rounds 0..N): ``python jobs/campaign.py --config conf/demo.yaml``
(the same as ``fer-engine campaign``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("campaign", __doc__ or "")
