"""Driver-side Ray Data preparation of the training streams: weights, class-balanced resampling, block shuffling.

The supervised stream is one dataset: labelled rows (loss weight 1, weak augmentation) united with pseudo-labelled
rows (loss weight ``lambda_u * weight``, strong augmentation), with columns ``image`` (binary), ``label`` (int64),
``weight`` (float32) and ``strong`` (bool). The unlabelled stream (online branch) keeps ``image`` and ``idx``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from engine.errors import ConfigError
from engine.schemas import SUPERVISED_SCHEMA

if TYPE_CHECKING:
    import ray.data


def check_columns(ds: ray.data.Dataset, required: Sequence[str], what: str) -> None:
    """Raise ConfigError when ``ds`` lacks one of ``required`` (names the dataset and its columns)."""
    columns = ds.columns()
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(
            f"the {what} dataset lacks column(s) {', '.join(missing)}; it has {', '.join(columns)}. "
            f"It needs {', '.join(required)}"
        )


def label_counts(ds: ray.data.Dataset, num_classes: int, what: str) -> npt.NDArray[np.int64]:
    """(C,) row counts per label of ``ds``'s ``label`` column (one pass over that column).

    Raises:
        ConfigError: a label outside ``[0, num_classes)``.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for batch in ds.select_columns(["label"]).iter_batches(batch_size=65536, batch_format="numpy"):
        labels = np.asarray(batch["label"], dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise ConfigError(
                f"the {what} dataset holds label {bad}, outside the label space's [0, {num_classes}); "
                "map labels into the campaign's label space (and drop unlabelled rows, label -1) before training"
            )
        counts += np.bincount(labels, minlength=num_classes)
    return counts


def balanced_repeat_factors(counts: Sequence[int] | npt.NDArray[np.int64]) -> list[float]:
    """Per-class expected repeat factors that make one epoch class-balanced without changing its length.

    ``r_c = (N / K) / n_c`` for the K classes present (``n_c > 0``; N = sum of n_c), 0 for absent classes. A row of
    class c is then used ``r_c`` times per epoch in expectation, so each present class contributes N/K rows and the
    epoch keeps N rows: frequent classes are subsampled (r_c < 1), rare ones repeated (r_c > 1).
    """
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    if not present.any():
        raise ConfigError("class-balanced sampling needs at least one labelled row; the labelled set is empty")
    target = n.sum() / present.sum()
    return [float(target / c) if c > 0 else 0.0 for c in n]


def draw_repeats(
    labels: npt.NDArray[np.int64], factors: Sequence[float], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Stochastic rounding of per-class repeat factors: ``k = floor(r) + Bernoulli(r - floor(r))`` per row.

    Returns:
        (B,) int64 repeat counts, with ``E[k] = r_{label}``.
    """
    r = np.asarray(factors, dtype=np.float64)[labels]
    base = np.floor(r)
    return (base + (rng.random(r.shape[0]) < (r - base))).astype(np.int64)


def _resample_batch(batch: pa.Table, factors: list[float]) -> pa.Table:
    # Seeded from OS entropy on purpose: Ray Data re-executes this map every epoch, so each epoch draws a new
    # balanced subset (a fixed seed would drop the same frequent-class rows in every epoch).
    labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    k = draw_repeats(labels, factors, np.random.default_rng())
    return batch.take(pa.array(np.repeat(np.arange(batch.num_rows), k)))


def _to_supervised(batch: pa.Table, scale: float, strong: bool) -> pa.Table:
    n = batch.num_rows
    if "weight" in batch.column_names:
        weight = batch.column("weight").to_numpy(zero_copy_only=False).astype(np.float32) * np.float32(scale)
    else:
        weight = np.full(n, scale, dtype=np.float32)
    va = {
        c: (
            batch.column(c).cast(pa.float32()).fill_null(float("nan"))
            if c in batch.column_names
            else pa.array(np.full(n, np.nan, dtype=np.float32))
        )
        for c in ("valence", "arousal")
    }
    soft = "target" in batch.column_names  # a soft label per row; empty: the row learns its label
    target = batch.column("target").cast(pa.binary()) if soft else pa.array([b""] * n, pa.binary())
    return pa.table(
        {
            "image": batch.column("image").cast(pa.binary()),
            "label": batch.column("label").cast(pa.int64()),
            "weight": pa.array(weight, pa.float32()),
            "strong": pa.array(np.full(n, strong)),
            **va,
            "target": target,
        },
        schema=SUPERVISED_SCHEMA,
    )


def build_supervised_dataset(
    labelled: ray.data.Dataset,
    pseudo: ray.data.Dataset | None,
    *,
    lambda_u: float,
    repeat_factors: list[float] | None,
    seed: int,
    with_va: bool = False,
    soft_targets: bool = False,
) -> ray.data.Dataset:
    """The supervised stream: labelled ∪ pseudo, weighted, optionally class-balanced, block order shuffled.

    Args:
        labelled: columns ``image``, ``label`` (and ``valence``, ``arousal`` when ``with_va``; NaN = unknown).
        pseudo: columns ``image``, ``label``, ``weight`` (offline selection) and, for soft labels, ``target``
            (:func:`engine.samples.samples_dataset` with ``score_dir``); None for none.
        lambda_u: multiplies the pseudo rows' ``weight``; labelled rows get weight 1.
        repeat_factors: per-class factors of :func:`balanced_repeat_factors` applied to labelled rows only (each
            epoch redraws them), or None for plain sampling.
        seed: base seed of the per-epoch block order (a different order each epoch, reproducible per run).

    Returns:
        Dataset with :data:`SUPERVISED_SCHEMA` columns.
    """
    from ray.data import RandomSeedConfig

    labelled_fn = functools.partial(_to_supervised, scale=1.0, strong=False)
    columns = ["image", "label", *(("valence", "arousal") if with_va else ())]
    ds = labelled.select_columns(columns).map_batches(labelled_fn, batch_format="pyarrow", batch_size=None)
    if repeat_factors is not None:
        resample_fn = functools.partial(_resample_batch, factors=list(repeat_factors))
        ds = ds.map_batches(resample_fn, batch_format="pyarrow", batch_size=None)
    if pseudo is not None:
        pseudo_fn = functools.partial(_to_supervised, scale=lambda_u, strong=True)
        ps = pseudo.select_columns(["image", "label", "weight", *(["target"] if soft_targets else [])]).map_batches(
            pseudo_fn, batch_format="pyarrow", batch_size=None
        )
        ds = ds.union(ps)
    return ds.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


def build_unlabelled_dataset(unlabelled: ray.data.Dataset, *, seed: int) -> ray.data.Dataset:
    """The online branch's stream: columns ``image`` and ``idx`` (int64 in [0, N_u)), block order shuffled."""
    return shuffled_blocks(unlabelled.select_columns(["image", "idx"]), seed=seed)


def shuffled_blocks(ds: ray.data.Dataset, *, seed: int) -> ray.data.Dataset:
    """A pool stream (the online branch's or the distilled pool's) with its block order shuffled anew every pass."""
    from ray.data import RandomSeedConfig

    return ds.randomize_block_order(seed=RandomSeedConfig(seed=seed + 1, reseed_after_execution=True))


def steps_per_epoch(rows: int, *, batch_size: int, num_workers: int) -> int:
    """Optimiser steps per epoch on each worker: Ray Train splits a dataset into equal shards of rows // workers."""
    return max(1, math.ceil((rows // num_workers) / batch_size))
