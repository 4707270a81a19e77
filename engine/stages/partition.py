"""Partition stage: which samples play which role in a campaign (labelled, unlabelled pool, val and test).

The labelled set is small by premise and is written out as ``partition/labelled.parquet``; the pool and the
evaluation sets are a rule (engine/partition_rule.py) committed as ``partition/rule.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import CampaignConfig, Config, SourceConfig
from engine.errors import ConfigError
from engine.fingerprint import fingerprint
from engine.io import fs
from engine.layout import SourceLayout
from engine.partition_rule import POOL_SPLITS, PartitionRule, keys_uniform
from engine.stages.base import RunOutput, Stage, StageContext, StageResult, TeacherRef

log = logging.getLogger(__name__)


class PartitionStage(Stage):
    """Choose the labelled set (seeded, class-stratified) and the pool / eval rules of a campaign."""

    name = "partition"
    RAY = False
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.layout = ctx.campaign
        self.root = ctx.root
        self.cfg: CampaignConfig = ctx.cfg.campaign

    @property
    def out_dir(self) -> str:
        return self.layout.partition_dir

    @property
    def label(self) -> str:
        return f"partition {self.cfg.name}"

    def inputs(self) -> tuple[str, ...]:
        return tuple(f"ingest:{s}" for s in used_sources(self.cfg))

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.labelled, self.layout.rule)

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
            "sources": {s: self.ctx.fingerprint_of(f"ingest:{s}") for s in used_sources(c)},
        }

    def run(self) -> RunOutput:
        c = self.cfg
        cols = ["key", "shard", "source", "label", "split", "leak_with"]
        lab_tables = []
        for s in c.labelled:
            for m in _manifest_parts(self.root, s, cols):
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
        labelled_keys = labelled["key"].combine_chunks()

        pool_sources = tuple(c.unlabelled)
        eval_sources = tuple(c.eval or c.labelled)
        pool_n = eval_n = 0
        # Counted manifest part by part: the driver holds one part and the labelled keys, whatever the pool's size.
        for s in sorted(set(pool_sources) | set(eval_sources)):
            for m in _manifest_parts(self.root, s, ["key", "split", "label", "leak_with"]):
                if s in pool_sources:
                    is_pool = pc.and_(pc.is_in(m["split"], pa.array(POOL_SPLITS)), pc.is_null(m["leak_with"]))
                    is_pool = pc.and_(is_pool, pc.invert(pc.is_in(m["key"], value_set=labelled_keys)))
                    pool_n += int(pc.sum(is_pool).as_py() or 0)
                if s in eval_sources:
                    is_eval = pc.and_(pc.is_in(m["split"], pa.array(["val", "test"])), pc.greater_equal(m["label"], 0))
                    eval_n += int(pc.sum(is_eval).as_py() or 0)
        rule = PartitionRule(
            seed=c.seed,
            pool_sources=pool_sources,
            eval_sources=eval_sources,
            pool_fraction=min(1.0, c.max_unlabelled / pool_n) if c.max_unlabelled and pool_n else 1.0,
            eval_fraction=min(1.0, c.max_eval / eval_n) if c.max_eval and eval_n else 1.0,
            labelled_keys_path=path,
        )
        fs.write_json(self.layout.rule, rule.stored(self.root))
        per_class = {int(d["values"]): int(d["counts"]) for d in pc.value_counts(labelled["label"]).to_pylist()}
        log.info("partition: %d labelled, pool ≈ %d", labelled.num_rows, round(pool_n * rule.pool_fraction))
        return RunOutput(
            counts={"labelled": labelled.num_rows, "pool_candidates": pool_n, "eval_candidates": eval_n},
            extra={"labelled_per_class": dict(sorted(per_class.items())), "rule": rule.stored(self.root)},
        )


def _manifest_parts(root: str, source: str, columns: list[str]) -> Iterator[pa.Table]:
    """The committed manifest of ``source``, one part (shard) at a time."""
    lay = SourceLayout(root, source)
    for i in range(int(fs.read_json(lay.success)["counts"]["shards"])):
        yield fs.read_parquet(lay.manifest_part(i), columns=columns)


def pool_only_partition(ctx: StageContext) -> StageResult:
    """Commit, by hand, a partition the partition stage refuses: nothing labelled, every train / unlabelled row of
    ``campaign.unlabelled`` (without a leakage flag) in the pool, no evaluation split. For benchmarks that score or
    threshold a whole corpus; returns the result to put upstream as ``partition``."""
    lay = ctx.campaign
    rule = PartitionRule(ctx.cfg.campaign.seed, tuple(ctx.cfg.campaign.unlabelled), (), 1.0, 1.0, lay.labelled)
    if not fs.exists(lay.rule):
        fs.write_parquet(lay.labelled, pa.table({"key": pa.array([], pa.string()), "label": pa.array([], pa.int16())}))
        fs.write_json(lay.rule, rule.stored(ctx.root))
    return StageResult("partition", fingerprint("pool-only partition", rule.stored(ctx.root)))


def pool_only_context(
    cfg: Config, source: SourceConfig, campaign: str, *, teacher: TeacherRef | None = None
) -> StageContext:
    """Round 1 of campaign ``campaign`` whose pool is all of ``source``: ``cfg`` with that one source and a campaign
    that labels nothing, and the :func:`pool_only_partition` committed upstream. For benchmarks that score or
    threshold a whole corpus (bench/score.py, bench/thresholds_fer2013.py)."""
    cfg = dataclasses.replace(
        cfg,
        sources={source.name: source},
        campaign=CampaignConfig(name=campaign, labelled=(source.name,), unlabelled=(source.name,)),
    )
    ctx = StageContext(cfg, round=1, teacher=teacher)
    return ctx.with_result("partition", pool_only_partition(ctx))


def used_sources(c: CampaignConfig) -> list[str]:
    """The sources a campaign reads, each once: labelled, then unlabelled, then eval."""
    return list(dict.fromkeys([*c.labelled, *c.unlabelled, *c.eval]))


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
