"""Evaluate a checkpoint on an ingested labelled source (ingesting it first if needed), e.g.
``python jobs/evaluate.py --config conf/fer2013.yaml --checkpoint teacher.pt --source fer2013 --split test``.
Rows flagged by the ingest leakage guard (twins of training rows) are left out. The same as ``fer-engine evaluate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("evaluate", __doc__ or "")
