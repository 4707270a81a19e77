"""Worker-side in-memory sets: the supervised shard decoded once per round, and the val split for model selection.

Labelled ∪ pseudo-labelled is small by premise (thousands to a few hundred thousand faces), while PNG decoding and a
Ray Data pass per epoch cost more than a small student's step on a CPU. When the shard fits in ``train.cache_mb``,
the worker reads it once, keeps uint8 pixels (N, C, S, S) and draws every epoch from memory: a seeded permutation
and, with class-balanced sampling, per-epoch stochastic repeats of the labelled rows (the same rule as the streaming
path, engine.train.data.draw_repeats). Augmentation stays per batch, so every epoch sees new views.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.config import ModelConfig
from engine.train.batch import NumpyBatch, images_to_uint8
from engine.train.data import draw_repeats


@dataclass(frozen=True)
class MemorySet:
    """Decoded rows: ``pixels`` uint8 (N, C, S, S) plus the stream's other columns (label, weight, strong, ...)."""

    columns: dict[str, npt.NDArray[np.generic]]

    @property
    def pixels(self) -> npt.NDArray[np.uint8]:
        """uint8 (N, C, S, S) decoded images."""
        px: npt.NDArray[np.uint8] = self.columns["pixels"]  # type: ignore[assignment]
        return px

    @property
    def rows(self) -> int:
        """Number of rows N."""
        return int(self.columns["pixels"].shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held (all columns)."""
        return int(sum(v.nbytes for v in self.columns.values()))


def decode_rows(batches: Iterable[NumpyBatch], model_cfg: ModelConfig) -> MemorySet:
    """Decode a stream of numpy batches with an ``image`` column (encoded bytes) into a :class:`MemorySet`."""
    size, chans = model_cfg.input_size, model_cfg.in_chans
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    for batch in batches:
        px = images_to_uint8(batch["image"], size=size, in_chans=chans).numpy()  # type: ignore[arg-type]
        parts.append({"pixels": px, **{k: np.asarray(v) for k, v in batch.items() if k not in ("image", "key")}})
    if not parts:
        return MemorySet({"pixels": np.zeros((0, chans, size, size), np.uint8)})
    return MemorySet({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})


def epoch_order(
    mem: MemorySet, rng: np.random.Generator, repeat_factors: Sequence[float] | None
) -> npt.NDArray[np.int64]:
    """Row indices of one epoch, shuffled: each row once, or with ``repeat_factors`` each labelled row (``strong``
    False) ``k ~ floor(r) + Bernoulli(frac(r))`` times for its class's factor r (pseudo rows once)."""
    n = mem.rows
    idx = np.arange(n, dtype=np.int64)
    if repeat_factors is not None:
        labelled = ~np.asarray(mem.columns["strong"], dtype=bool)
        k = np.ones(n, dtype=np.int64)
        k[labelled] = draw_repeats(np.asarray(mem.columns["label"], np.int64)[labelled], repeat_factors, rng)
        idx = np.repeat(idx, k)
    return rng.permutation(idx)


def memory_batches(mem: MemorySet, order: npt.NDArray[np.int64], batch_size: int) -> Iterator[NumpyBatch]:
    """Batches of ``batch_size`` rows (the last may be shorter) in ``order``; ``pixels`` replaces ``image``."""
    for start in range(0, len(order), batch_size):
        take = order[start : start + batch_size]
        yield {c: v[take] for c, v in mem.columns.items()}


def to_images(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(N, C, S, S) model-layout pixels as the (N, S, S) / (N, S, S, C) images a teacher's ``predict`` takes."""
    return np.array(pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1), order="C")  # a copy
