"""Per-video temporal smoothing of class probabilities (CFC-SP "smooth predicting"), in pure numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError

METHODS = ("mean", "ema")


def smooth_probs(
    probs: npt.ArrayLike, frames: npt.ArrayLike, *, method: str = "mean", window: int = 5
) -> npt.NDArray[np.float32]:
    """Smooth the probabilities of one video's frames over neighbouring frames.

    Rows are processed in frame order and returned in the input order.

    - ``mean``: centred moving average over the frames whose number lies within ``window // 2`` of the row's frame
      number (a gap in the numbering, e.g. a frame without a detected face, shrinks the window, it never reaches
      further frames). ``window=1`` is the identity.
    - ``ema``: causal exponential moving average in frame order, ``s_0 = p_0``, ``s_t = a·p_t + (1 − a)·s_{t−1}``
      with ``a = 2 / (window + 1)``.

    Both are convex combinations of probability vectors, so rows still sum to 1 (up to float rounding) and a
    constant sequence is returned unchanged.

    Args:
        probs: (T, C) probabilities of the T frames of one video.
        frames: (T,) distinct frame numbers.
        method: ``mean`` or ``ema``.
        window: window length in frames, >= 1.

    Returns:
        (T, C) float32 smoothed probabilities, row i belonging to input row i.

    Raises:
        ConfigError: unknown method or window < 1.
        ValueError: shapes differ or a frame number repeats.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown smoothing method {method!r}; use one of {', '.join(METHODS)}")
    if window < 1:
        raise ConfigError(f"smoothing window must be >= 1 frame, got {window}")
    p = np.asarray(probs, dtype=np.float64)
    f = np.asarray(frames, dtype=np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != f.shape[0]:
        raise ValueError(f"probs (T, C) and frames (T,) disagree: {p.shape} vs {f.shape}")
    if p.shape[0] == 0:
        return p.astype(np.float32)
    order = np.argsort(f, kind="stable")
    fs, ps = f[order], p[order]
    if np.any(np.diff(fs) == 0):
        raise ValueError(f"frame numbers repeat within one video: {fs[np.flatnonzero(np.diff(fs) == 0)[0]]}")
    out = _centred_mean(ps, fs, window // 2) if method == "mean" else _ema(ps, 2.0 / (window + 1.0))
    result = np.empty_like(out)
    result[order] = out
    return result.astype(np.float32)


def _centred_mean(p: npt.NDArray[np.float64], f: npt.NDArray[np.int64], half: int) -> npt.NDArray[np.float64]:
    lo = np.searchsorted(f, f - half, side="left")
    hi = np.searchsorted(f, f + half, side="right")
    out = np.empty_like(p)
    for i in range(p.shape[0]):  # windows are short; an explicit mean keeps constant rows exactly constant
        out[i] = p[lo[i] : hi[i]].mean(axis=0)
    return out


def _ema(p: npt.NDArray[np.float64], alpha: float) -> npt.NDArray[np.float64]:
    out = np.empty_like(p)
    out[0] = p[0]
    for t in range(1, p.shape[0]):
        out[t] = alpha * p[t] + (1.0 - alpha) * out[t - 1]
    return out


def count_label_changes(labels: npt.ArrayLike) -> int:
    """Number of positions where a label sequence differs from its predecessor (flicker count)."""
    y = np.asarray(labels).ravel()
    return int(np.count_nonzero(y[1:] != y[:-1])) if y.size > 1 else 0
