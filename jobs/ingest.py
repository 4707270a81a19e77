"""Ingest sources into WebDataset shards with a manifest: ``python jobs/ingest.py --config conf/fer2013.yaml``
(the same as ``fer-engine ingest``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli

if __name__ == "__main__":
    cli.job("ingest", __doc__ or "")
