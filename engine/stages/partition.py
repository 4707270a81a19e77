"""Which samples play which role in a campaign: labelled, unlabelled pool, val and test.

The labelled set is small by premise and is written out as ``partition/labelled.parquet``. The unlabelled pool and
the evaluation sets can be huge, so they are defined by a *rule* (source, split, label, leakage flag and a seeded hash
of the key) that every distributed task applies to its own rows; only the rule's parameters are stored.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import CampaignConfig
from engine.errors import ConfigError
from engine.io import fs
from engine.layout import CampaignLayout, SourceLayout, join
from engine.stages.base import RunOutput, Stage

log = logging.getLogger(__name__)

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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionRule:
        return cls(**{**d, "pool_sources": tuple(d["pool_sources"]), "eval_sources": tuple(d["eval_sources"])})


class PartitionStage(Stage):
    """Choose the labelled set (seeded, class-stratified) and the pool / eval rules of a campaign."""

    name = "partition"
    VERSION = 1

    def __init__(self, root: str, campaign: CampaignConfig, source_fps: dict[str, str], *, on_existing: str = "error"):
        self.layout = CampaignLayout(root, campaign.name)
        super().__init__(self.layout.partition_dir, on_existing=on_existing, label=f"partition {campaign.name}")
        self.root = root
        self.cfg = campaign
        self.source_fps = source_fps

    def fingerprint_inputs(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "labelled": c.labelled,
            "unlabelled": c.unlabelled,
            "eval": c.eval,
            "labelled_fraction": c.labelled_fraction,
            "max_labelled": c.max_labelled,
            "max_unlabelled": c.max_unlabelled,
            "max_eval": c.max_eval,
            "seed": c.seed,
            "sources": self.source_fps,
        }

    def run(self) -> RunOutput:
        c = self.cfg
        cols = ["key", "shard", "source", "label", "split", "leak_with"]
        lab_tables = []
        for s in c.labelled:
            m = fs.read_parquet(SourceLayout(self.root, s).manifest_dir, columns=cols)
            lab_tables.append(m.filter(pc.and_(pc.equal(m["split"], "train"), pc.greater_equal(m["label"], 0))))
        cand = pa.concat_tables(lab_tables) if lab_tables else None
        labelled = _stratified(cand, c.labelled_fraction, c.max_labelled, c.seed) if cand is not None else None
        if labelled is None or labelled.num_rows == 0:
            raise ConfigError(
                f"campaign {c.name}: the labelled set is empty; set campaign.labelled to a labelled source"
            )
        labelled = labelled.select(["key", "shard", "source", "label"]).sort_by("key")
        path = self.layout.labelled
        fs.write_parquet(path, labelled)
        labelled_keys = set(labelled["key"].to_pylist())

        pool_sources = tuple(c.unlabelled)
        eval_sources = tuple(c.eval or c.labelled)
        pool_n = eval_n = 0
        for s in sorted(set(pool_sources) | set(eval_sources)):
            m = fs.read_parquet(
                SourceLayout(self.root, s).manifest_dir, columns=["key", "split", "label", "leak_with"]
            )
            if s in pool_sources:
                is_pool = pc.and_(pc.is_in(m["split"], pa.array(POOL_SPLITS)), pc.is_null(m["leak_with"]))
                pool_keys = m.filter(is_pool)["key"].to_pylist()
                pool_n += sum(1 for k in pool_keys if k not in labelled_keys)
            if s in eval_sources:
                eval_n += int(
                    pc.sum(
                        pc.and_(pc.is_in(m["split"], pa.array(["val", "test"])), pc.greater_equal(m["label"], 0))
                    ).as_py()
                    or 0
                )
        rule = PartitionRule(
            seed=c.seed,
            pool_sources=pool_sources,
            eval_sources=eval_sources,
            pool_fraction=min(1.0, c.max_unlabelled / pool_n) if c.max_unlabelled and pool_n else 1.0,
            eval_fraction=min(1.0, c.max_eval / eval_n) if c.max_eval and eval_n else 1.0,
            labelled_keys_path=path,
        )
        fs.write_json(join(self.out_dir, "rule.json"), rule.to_json())
        per_class = {int(d["values"]): int(d["counts"]) for d in pc.value_counts(labelled["label"]).to_pylist()}
        log.info("partition: %d labelled, pool ≈ %d", labelled.num_rows, round(pool_n * rule.pool_fraction))
        return RunOutput(
            counts={"labelled": labelled.num_rows, "pool_candidates": pool_n, "eval_candidates": eval_n},
            extra={"labelled_per_class": dict(sorted(per_class.items())), "rule": rule.to_json()},
        )


def load_rule(root: str, campaign: str) -> PartitionRule:
    """The committed partition rule of a campaign."""
    return PartitionRule.from_json(fs.read_json(join(CampaignLayout(root, campaign).partition_dir, "rule.json")))


def _stratified(t: pa.Table, fraction: float | None, cap: int | None, seed: int) -> pa.Table:
    """Per class, the rows with the smallest seeded key hash: round(fraction · n_c) of them, then a total cap."""
    keys = t["key"].to_pylist()
    u = keys_uniform(seed, keys)
    labels = t["label"].to_numpy()
    keep = np.ones(len(keys), dtype=bool)
    if fraction is not None and fraction < 1.0:
        keep = _per_class_smallest(keep, labels, u, fraction)
    if cap is not None and cap < int(keep.sum()):
        keep = _per_class_smallest(keep, labels, u, cap / int(keep.sum()))
    return t.filter(pa.array(keep))


def _per_class_smallest(keep: np.ndarray, labels: np.ndarray, u: np.ndarray, frac: float) -> np.ndarray:
    new = np.zeros_like(keep)
    for c in np.unique(labels[keep]):
        idx = np.flatnonzero(keep & (labels == c))
        k = max(1, round(frac * len(idx)))
        new[idx[np.argsort(u[idx], kind="stable")[:k]]] = True
    return new
