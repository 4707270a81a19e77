"""Worker-side batches: encoded bytes to augmented model input, and a fixed-size cycling unlabelled stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.data.transforms import (
    Augment,
    build_strong_augment,
    build_weak_augment,
    match_channels,
    normalize_batch,
)
from engine.errors import ConfigError, EngineError
from engine.imaging import decode_pixels

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig

NumpyBatch = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class Augmenters:
    """Weak (random crop with reflect padding + flip) and strong (weak + RandAugment + Cutout) uint8 augmentations."""

    weak: Augment
    strong: Augment

    @classmethod
    def default(cls) -> Augmenters:
        """The FixMatch pair of engine.data.transforms with its defaults."""
        return cls(weak=build_weak_augment(), strong=build_strong_augment())


def images_to_uint8(images: Sequence[bytes], *, size: int, in_chans: int) -> torch.Tensor:
    """Decode encoded images into one uint8 (B, in_chans, size, size) tensor.

    Channels follow ``transforms.match_channels`` (grey repeated, RGB to luma) and other sizes are resized
    (bilinear, antialiased, rounded back to uint8), so augmentation runs on a stacked uint8 batch.
    """
    import torch
    import torch.nn.functional as F

    if len(images) == 0:
        return torch.empty((0, in_chans, size, size), dtype=torch.uint8)
    arrays = [decode_pixels(bytes(b)) for b in images]
    groups = [np.stack(arrays)] if len({a.shape for a in arrays}) == 1 else [a[None] for a in arrays]
    outs = []
    for arr in groups:
        x = torch.from_numpy(np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy())
        x = match_channels(x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2), in_chans)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        outs.append(x.contiguous())
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def supervised_input(
    batch: NumpyBatch, model_cfg: ModelConfig, aug: Augmenters, *, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model input, labels and loss weights of one supervised batch.

    Rows with ``strong`` set (pseudo-labelled) get the strong augmentation, the others (labelled) the weak one.
    The batch holds either encoded ``image`` bytes or decoded uint8 ``pixels`` (B, in_chans, S, S).

    Raises:
        ConfigError: a label outside ``[0, num_classes)``.

    Returns:
        ``(x, y, w)``: float32 (B, in_chans, S, S) normalised input, int64 (B,) labels, float32 (B,) weights.
    """
    import torch

    if "pixels" in batch:  # already decoded (engine.train.memory)
        x8 = torch.from_numpy(np.ascontiguousarray(batch["pixels"]))
    else:
        x8 = images_to_uint8(batch["image"], size=model_cfg.input_size, in_chans=model_cfg.in_chans)  # type: ignore[arg-type]
    strong = torch.from_numpy(np.asarray(batch["strong"], dtype=bool))
    out = torch.empty_like(x8)
    if (~strong).any():
        out[~strong] = aug.weak(x8[~strong])
    if strong.any():
        out[strong] = aug.strong(x8[strong])
    y = torch.tensor(np.asarray(batch["label"], dtype=np.int64))
    w = torch.tensor(np.asarray(batch["weight"], dtype=np.float32))
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ConfigError(
            f"training label {int(y[bad][0])} is outside the label space's [0, {num_classes}); map labels into the "
            "campaign's label space (and drop unlabelled rows, label -1) before training"
        )
    return normalize_uint8(out, model_cfg), y, w


def soft_targets(
    batch: NumpyBatch, y: torch.Tensor, num_classes: int, smoothing: float = 0.0
) -> tuple[torch.Tensor, int] | None:
    """(B, C) float32 targets and the number of soft rows, when a row of ``batch`` has a soft label (a non-empty
    ``target``: C little-endian float32); None when none has. Rows without one get ``(1-ε)·onehot(y) + ε/C``, the
    target of the hard cross-entropy with label smoothing ε, so one soft cross-entropy covers the whole batch.

    Raises:
        ConfigError: a soft label whose length is not C float32.
    """
    import torch

    raw = batch.get("target")
    if raw is None:
        return None
    values = [bytes(b) for b in np.asarray(raw, dtype=object)]
    soft = np.array([len(b) > 0 for b in values], dtype=bool)
    if not soft.any():
        return None
    bad = [len(b) for b, s in zip(values, soft, strict=True) if s and len(b) != 4 * num_classes]
    if bad:
        raise ConfigError(
            f"a soft label holds {bad[0]} bytes, not {num_classes} float32 (the label space's classes); rebuild the "
            "round's score stage with the campaign's label space"
        )
    t = torch.full((len(values), num_classes), smoothing / num_classes, dtype=torch.float32)
    t[torch.arange(len(values)), y] += 1.0 - smoothing
    probs = np.frombuffer(b"".join(b for b, s in zip(values, soft, strict=True) if s), dtype="<f4")
    t[torch.from_numpy(soft)] = torch.from_numpy(probs.reshape(-1, num_classes).astype(np.float32))
    return t, int(soft.sum())


def unlabelled_views(
    batch: NumpyBatch, model_cfg: ModelConfig, aug: Augmenters
) -> tuple[torch.Tensor, torch.Tensor, npt.NDArray[np.int64]]:
    """Weak view, strong view (both normalised float32 (U, in_chans, S, S)) and (U,) int64 pool indices."""
    u8 = images_to_uint8(batch["image"], size=model_cfg.input_size, in_chans=model_cfg.in_chans)  # type: ignore[arg-type]
    idx = np.asarray(batch["idx"], dtype=np.int64)
    return normalize_uint8(aug.weak(u8), model_cfg), normalize_uint8(aug.strong(u8), model_cfg), idx


def distill_views(
    batch: NumpyBatch, model_cfg: ModelConfig, aug: Augmenters, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Strong view (normalised float32 (U, in_chans, S, S)) and (U, C) float32 teacher probabilities of a batch of
    distilled pool rows (``image``, ``target``: C little-endian float32 each).

    Raises:
        ConfigError: a target whose length is not C float32.
    """
    import torch

    u8 = images_to_uint8(batch["image"], size=model_cfg.input_size, in_chans=model_cfg.in_chans)  # type: ignore[arg-type]
    raw = [bytes(b) for b in np.asarray(batch["target"], dtype=object)]
    if any(len(b) != 4 * num_classes for b in raw):
        bad = next(len(b) for b in raw if len(b) != 4 * num_classes)
        raise ConfigError(
            f"a distilled row's teacher probabilities hold {bad} bytes, not {num_classes} float32; rebuild the "
            "round's score stage with the campaign's label space"
        )
    probs = np.frombuffer(b"".join(raw), dtype="<f4").reshape(-1, num_classes).astype(np.float32)
    return normalize_uint8(aug.strong(u8), model_cfg), torch.from_numpy(probs)


def normalize_uint8(x: torch.Tensor, model_cfg: ModelConfig) -> torch.Tensor:
    """``transforms.normalize_batch`` with the model's size, channels, mean and std."""
    return normalize_batch(
        x, input_size=model_cfg.input_size, in_chans=model_cfg.in_chans, mean=model_cfg.mean, std=model_cfg.std
    )


def cycle_batches(passes: Callable[[int], Iterable[NumpyBatch]], size: int) -> Iterator[NumpyBatch]:
    """Endless batches of exactly ``size`` rows over a stream that is re-read from the start when exhausted.

    Args:
        passes: ``passes(k)`` iterates the stream for the k-th time (k = 0, 1, ...), yielding numpy batches of any
            size with the same columns.
        size: rows per yielded batch; a batch may straddle the end of one pass and the start of the next.

    Raises:
        EngineError: a whole pass yielded no rows (an empty stream would loop forever).
    """
    pending: list[NumpyBatch] = []
    buffered = 0
    k = 0
    while True:
        rows_this_pass = 0
        for batch in passes(k):
            n = len(next(iter(batch.values())))
            rows_this_pass += n
            if n == 0:
                continue
            pending.append(batch)
            buffered += n
            while buffered >= size:
                merged = {c: np.concatenate([b[c] for b in pending]) for c in pending[0]}
                yield {c: v[:size] for c, v in merged.items()}
                rest = {c: v[size:] for c, v in merged.items()}
                buffered -= size
                pending = [rest] if buffered else []
        k += 1
        if rows_this_pass == 0:
            raise EngineError(
                "the unlabelled stream of this worker is empty, so the online branch has nothing to draw; give "
                "more unlabelled rows than train.num_workers, or set train.online_policy=null"
            )
