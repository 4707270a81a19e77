"""Check every committed file of a storage root against the sha256 its stage recorded, and list what to rebuild:
``python jobs/verify.py runs/demo`` (the same as ``fer-engine verify``; exit code 1 when a file differs)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("verify", __doc__ or "")
