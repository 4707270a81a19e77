"""ABAW2021 sequence teachers: GRU / transformer members over windows of per-frame CNN features, and their ensemble.

A model with ``model.temporal`` members is a per-frame CNN (``MultiHeadNet``: backbone → features → head) carrying
extra ``TemporalHead`` modules in ``model.temporal``. Scoring runs the CNN per image (probabilities and features);
then, per video (manifest ``group`` ordered by ``frame``), each member turns the feature sequence into per-frame
probabilities over overlapping windows, and the teacher's output is the weighted mean of the members
``[cnn, *temporal]``. An image outside any video is a one-frame sequence, so every row gets every member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engine.errors import ConfigError


class TemporalHead(nn.Module):
    """Per-frame logits from a window of per-frame features: (B, T, D) → (B, T, C).

    ``gru``: Linear(D → H), bidirectional GRU (H per direction), Linear(2H → C) (the ABAW2021 CNN-RNN).
    ``transformer``: Linear(D → H) plus a learned position embedding, a 2-layer transformer encoder (4 heads,
    pre-norm), Linear(H → C) (the ABAW2021 CNN-Transformer). ``max_len`` bounds the window length of the latter.
    """

    def __init__(self, kind: str, feature_dim: int, num_classes: int, *, hidden: int = 64, max_len: int = 64) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden), nn.GELU())
        if kind == "gru":
            self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * hidden, num_classes)
        elif kind == "transformer":
            heads = 4 if hidden % 4 == 0 else 1
            self.pos = nn.Parameter(torch.zeros(1, max_len, hidden))
            layer = nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=2 * hidden, dropout=0.1, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.out = nn.Linear(hidden, num_classes)
        else:
            raise ValueError(f"unknown temporal member {kind!r}; use gru or transformer")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.proj(feats)
        if self.kind == "gru":
            h, _ = self.gru(h)
        else:
            if h.shape[1] > self.pos.shape[1]:
                raise ValueError(f"window of {h.shape[1]} frames exceeds the transformer's {self.pos.shape[1]}")
            h = self.encoder(h + self.pos[:, : h.shape[1]])
        logits: torch.Tensor = self.out(h)
        return logits


def build_temporal(
    members: Sequence[str], feature_dim: int, num_classes: int, *, hidden: int, window: int
) -> nn.ModuleDict:
    """One ``TemporalHead`` per member name, in order."""
    return nn.ModuleDict(
        {m: TemporalHead(m, feature_dim, num_classes, hidden=hidden, max_len=max(window, 1)) for m in members}
    )


def window_starts(length: int, window: int) -> list[int]:
    """Start frames of the windows covering a sequence of ``length`` frames: stride ``ceil(window / 2)``, the last
    window ending at the last frame. A sequence shorter than ``window`` is one window of its own length."""
    if length <= window:
        return [0]
    stride = max(1, math.ceil(window / 2))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.inference_mode()
def member_probs(head: nn.Module, feats: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """(T, C) per-frame probabilities of one member over one video's (T, D) features (frame order), each frame's the
    mean softmax over the windows that contain it."""
    t = feats.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    starts = window_starts(t, window)
    w = min(window, t)
    batch = torch.stack([x[s : s + w] for s in starts])  # (n_windows, w, D)
    probs = head(batch).float().softmax(-1).numpy()  # (n_windows, w, C)
    total = np.zeros((t, probs.shape[-1]), np.float64)
    count = np.zeros((t, 1), np.float64)
    for s, p in zip(starts, probs, strict=True):
        total[s : s + w] += p
        count[s : s + w] += 1
    return (total / count).astype(np.float32)


@torch.inference_mode()
def single_frame_probs(head: nn.Module, feats: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(N, C) probabilities of N independent one-frame sequences (images outside any video)."""
    if feats.shape[0] == 0:
        return np.zeros((0, getattr(head, "out").out_features), np.float32)  # noqa: B009
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[:, None, :]
    probs: npt.NDArray[np.float32] = head(x)[:, 0].float().softmax(-1).numpy().astype(np.float32)
    return probs


def ensemble(
    cnn_probs: npt.NDArray[np.float32],
    members: Mapping[str, npt.NDArray[np.float32]],
    weights: Sequence[float] | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(probs (N, C), member_probs (N, M, C))``: the weighted mean of ``[cnn, *members]`` (weights normalised,
    equal when None) and the stacked member probabilities in that order."""
    stack = np.stack([cnn_probs, *members.values()], axis=1).astype(np.float32)
    w = np.asarray(normalize_weights(weights, stack.shape[1]), np.float64)
    probs = np.einsum("nmc,m->nc", stack.astype(np.float64), w)
    return probs.astype(np.float32), stack


def video_sequences(
    videos: Sequence[str | None], frames: Sequence[int | None]
) -> tuple[list[npt.NDArray[np.int64]], npt.NDArray[np.int64]]:
    """Row indices of each video in frame order (videos sorted by id), and of the rows outside any video (video or
    frame None), in input order."""
    by_video: dict[str, list[int]] = {}
    singles: list[int] = []
    for i, (v, f) in enumerate(zip(videos, frames, strict=True)):
        if v is None or f is None:
            singles.append(i)
        else:
            by_video.setdefault(v, []).append(i)
    ordered = [
        np.asarray(sorted(rows, key=lambda i: int(frames[i])), np.int64)  # type: ignore[arg-type]
        for _, rows in sorted(by_video.items())
    ]
    return ordered, np.asarray(singles, np.int64)


def sequence_predict(
    temporal: Mapping[str, nn.Module] | nn.ModuleDict,
    cnn_probs: npt.NDArray[np.float32],
    feats: npt.NDArray[np.float32],
    videos: Sequence[str | None],
    frames: Sequence[int | None],
    *,
    window: int,
    weights: Sequence[float] | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The sequence ensemble over N rows: ``(probs (N, C), member_probs (N, 1 + len(temporal), C))``.

    Rows sharing a video id are one sequence ordered by frame (a video split across calls is split into
    sequences); rows whose video or frame is None are one-frame sequences. Rows come back in input order.
    """
    out = {m: np.zeros_like(cnn_probs, dtype=np.float32) for m in temporal}
    by_video, singles = video_sequences(videos, frames)
    for idx in by_video:
        for m, head in temporal.items():
            out[m][idx] = member_probs(head, feats[idx], window)
    if len(singles):
        for m, head in temporal.items():
            out[m][singles] = single_frame_probs(head, feats[singles])
    return ensemble(cnn_probs, out, weights)


def normalize_weights(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    """``weights`` divided by their sum (equal weights when None).

    Raises:
        ConfigError: wrong length, a negative or non-finite weight, or a zero sum.
    """
    if weights is None:
        return tuple([1.0 / n] * n)
    w = [float(v) for v in weights]
    if len(w) != n:
        raise ConfigError(f"got {len(w)} ensemble weights for {n} members; give one weight per member")
    if any(not np.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"ensemble weights must be finite, non-negative and not all zero, got {w}")
    total = sum(w)
    return tuple(v / total for v in w)
