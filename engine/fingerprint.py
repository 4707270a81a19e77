"""Stable fingerprints: sha256 of canonical JSON over a stage name, version, config subset and input digests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.config import to_dict


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; dataclasses and tuples become dicts and lists."""
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(*parts: Any) -> str:
    """Hex sha256 of the canonical JSON of ``parts``: independent of dict key order, sensitive to every value."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()


def short(fp: str) -> str:
    """The first 8 hex digits, for logs."""
    return fp[:8]
