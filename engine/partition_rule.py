"""The partition rule: whether a row is in a campaign's unlabelled pool or in an evaluation split.

The unlabelled pool and the evaluation sets can be huge, so they are defined by a *rule* (source, split, label,
leakage flag and a seeded hash of the key) that every distributed task applies to its own rows; only the rule's
parameters are stored (``partition/rule.json``, committed by the partition stage).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.io import fs
from engine.layout import CampaignLayout, root_path, stored_path

POOL_SPLITS = ("train", "unlabelled")


def key_uniform(seed: int, key: str) -> float:
    """A deterministic uniform number in [0, 1) for (seed, key)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def keys_uniform(seed: int, keys: list[str]) -> np.ndarray:
    """``key_uniform`` for many keys, as float64 (N,)."""
    return np.fromiter((key_uniform(seed, k) for k in keys), dtype=np.float64, count=len(keys))


@dataclass(frozen=True)
class PartitionRule:
    """The stored rule that says, row by row, whether a sample is in the pool or in an evaluation split."""

    seed: int
    pool_sources: tuple[str, ...]
    eval_sources: tuple[str, ...]
    pool_fraction: float
    eval_fraction: float
    labelled_keys_path: str

    def pool_mask(
        self, source: str, keys: list[str], splits: list[str], leak: list[Any], labelled: set[str]
    ) -> np.ndarray:
        """Boolean (N,) mask of pool members among rows of one shard of ``source``."""
        if source not in self.pool_sources:
            return np.zeros(len(keys), dtype=bool)
        base = np.array(
            [
                s in POOL_SPLITS and lw is None and k not in labelled
                for k, s, lw in zip(keys, splits, leak, strict=True)
            ],
            dtype=bool,
        )
        if self.pool_fraction < 1.0:
            base &= keys_uniform(self.seed + 1, keys) < self.pool_fraction
        return base

    def eval_mask(
        self, source: str, split: str, keys: list[str], splits: list[str], labels: list[int], leak: list[Any]
    ) -> np.ndarray:
        """Boolean (N,) mask of rows of ``split`` evaluated: labelled, deduplicated against training (and test
        against val), capped by the seeded eval fraction."""
        if source not in self.eval_sources:
            return np.zeros(len(keys), dtype=bool)
        forbidden = {"val": ("train", "unlabelled"), "test": ("train", "unlabelled", "val")}[split]
        base = np.array(
            [
                s == split and lab >= 0 and not (lw and any(f in lw.split(",") for f in forbidden))
                for s, lab, lw in zip(splits, labels, leak, strict=True)
            ],
            dtype=bool,
        )
        if self.eval_fraction < 1.0:
            base &= keys_uniform(self.seed + 2, keys) < self.eval_fraction
        return base

    def labelled_keys(self) -> set[str]:
        """Keys of the labelled set."""
        return set(fs.read_parquet(self.labelled_keys_path, columns=["key"])["key"].to_pylist())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def stored(self, root: str) -> dict[str, Any]:
        """The rule as ``rule.json`` holds it: the labelled keys named relative to the storage root (a copied root
        keeps working); :func:`load_rule` resolves it back."""
        return {**self.to_json(), "labelled_keys_path": stored_path(root, self.labelled_keys_path)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionRule:
        return cls(**{**d, "pool_sources": tuple(d["pool_sources"]), "eval_sources": tuple(d["eval_sources"])})


def load_rule(root: str, campaign: str) -> PartitionRule:
    """The committed partition rule of a campaign."""
    d = fs.read_json(CampaignLayout(root, campaign).rule)
    return PartitionRule.from_json({**d, "labelled_keys_path": root_path(root, d["labelled_keys_path"])})
