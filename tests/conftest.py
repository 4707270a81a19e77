"""Shared pytest fixtures (keep small; dataset builders live in tests/fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import FER_DIR, fer_available


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    """The shared real FER2013 folder (tar + labels.csv); tests needing it skip where it is absent."""
    if not fer_available():
        pytest.skip(f"FER2013 data not found at {FER_DIR} (set FER2013_DIR)")
    return FER_DIR
