"""Review batches for people (the same as ``fer-engine review``): ``python jobs/review.py export --config conf/x.yaml
--size 500 --rule margin`` runs the next round up to its batch, a ready Label Studio project; ``python jobs/review.py
import export.json --config conf/x.yaml`` commits people's answers; the next campaign run trains on them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("review", __doc__ or "")
