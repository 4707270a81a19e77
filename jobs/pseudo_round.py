"""Run the next round of a campaign (ingesting its sources first if needed), e.g. on a cluster:
``ray job submit --working-dir . -- python jobs/pseudo_round.py --config conf/demo.yaml --set storage.root=s3://…``.
Round 0 (the first teacher) runs first when it has not run yet (the same as ``fer-engine round``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("round", __doc__ or "")
