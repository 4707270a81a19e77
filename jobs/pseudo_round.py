"""Run one round of a campaign: the next one not done (ingesting its sources first if needed), e.g. on a cluster:
``ray job submit --working-dir . -- python jobs/pseudo_round.py --config conf/demo.yaml --set storage.root=s3://…``.
The first call runs round 0 (the first teacher), each later call the next round; ``--all`` runs every remaining
round (the same as ``fer-engine round``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("round", __doc__ or "")
