"""Logging set-up for jobs: one format, INFO by default, noisy libraries quietened."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent)."""
    root = logging.getLogger()
    if getattr(root, "_engine_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock", "PIL", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._engine_configured = True  # type: ignore[attr-defined]
