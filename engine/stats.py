"""Summable per-class score statistics of a model's probabilities over a pool (ScoreStats)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BINS = 1000
"""Default number of uniform confidence bins on [0, 1] (bin width 0.001)."""

_FORMAT_VERSION = 1
_JSON_FIELDS = ("num_classes", "bins", "n", "pred_counts", "conf_hist", "conf_sum", "prob_sum")


def _bin_edges(bins: int) -> npt.NDArray[np.float64]:
    # i / B is correctly rounded, so edge i equals the float literal of i/B (0.95 == 95/100 exactly).
    return np.arange(bins + 1, dtype=np.float64) / bins


def _readonly(a: npt.ArrayLike, dtype: type, shape: tuple[int, ...], name: str) -> npt.NDArray[Any]:
    arr: npt.NDArray[Any] = np.array(a, dtype=dtype)
    if arr.shape != shape:
        raise ConfigError(f"ScoreStats.{name} has shape {arr.shape}, expected {shape}; rebuild it with from_probs")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ScoreStats:
    """Summable statistics of a probability matrix, enough to fit every offline threshold policy.

    Rows are binned by their max confidence ``conf = max_c p(c)`` into ``bins`` uniform bins on [0, 1]:
    bin ``i`` holds ``i/B <= conf < (i+1)/B``, and ``conf == 1.0`` goes in the last bin. Sums over disjoint
    row sets add exactly for the integer fields, so shards can be scored independently and reduced with ``+``.

    Attributes:
        num_classes: C.
        bins: B.
        n: number of rows; equals ``pred_counts.sum()`` and ``conf_hist.sum()``.
        pred_counts: (C,) int64, rows whose argmax is c (ties go to the lowest index).
        conf_hist: (C, B) int64, histogram of max confidence of rows predicted as c.
        conf_sum: (C,) float64, sum of max confidence of rows predicted as c.
        prob_sum: (C,) float64, sum of the probability vectors of all rows.
    """

    num_classes: int
    bins: int
    n: int
    pred_counts: npt.NDArray[np.int64]
    conf_hist: npt.NDArray[np.int64]
    conf_sum: npt.NDArray[np.float64]
    prob_sum: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        c, b = int(self.num_classes), int(self.bins)
        if c < 1 or b < 1:
            raise ConfigError(f"ScoreStats needs num_classes >= 1 and bins >= 1, got C={c}, B={b}")
        object.__setattr__(self, "num_classes", c)
        object.__setattr__(self, "bins", b)
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "pred_counts", _readonly(self.pred_counts, np.int64, (c,), "pred_counts"))
        object.__setattr__(self, "conf_hist", _readonly(self.conf_hist, np.int64, (c, b), "conf_hist"))
        object.__setattr__(self, "conf_sum", _readonly(self.conf_sum, np.float64, (c,), "conf_sum"))
        object.__setattr__(self, "prob_sum", _readonly(self.prob_sum, np.float64, (c,), "prob_sum"))
        if (self.conf_hist < 0).any() or self.n != int(self.pred_counts.sum()) or self.n != int(self.conf_hist.sum()):
            raise ConfigError(
                f"ScoreStats counts are inconsistent: n={self.n}, sum(pred_counts)={int(self.pred_counts.sum())}, "
                f"sum(conf_hist)={int(self.conf_hist.sum())}; rebuild the stats with ScoreStats.from_probs"
            )
        if not np.array_equal(self.pred_counts, self.conf_hist.sum(axis=1)):
            raise ConfigError("ScoreStats.pred_counts differs from the row sums of conf_hist; rebuild with from_probs")

    @classmethod
    def zero(cls, num_classes: int, bins: int = DEFAULT_BINS) -> ScoreStats:
        """Return the neutral element of ``+`` (no rows)."""
        return cls(
            num_classes=num_classes,
            bins=bins,
            n=0,
            pred_counts=np.zeros(num_classes, np.int64),
            conf_hist=np.zeros((num_classes, bins), np.int64),
            conf_sum=np.zeros(num_classes),
            prob_sum=np.zeros(num_classes),
        )

    @classmethod
    def from_probs(cls, probs: npt.ArrayLike, bins: int = DEFAULT_BINS) -> ScoreStats:
        """Build the statistics of one probability matrix.

        Args:
            probs: (N, C) float, one probability vector per row (N may be 0). Values must be finite;
                confidences outside [0, 1] are clipped into the first or last bin.
            bins: B, number of uniform confidence bins on [0, 1].
        """
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] < 1:
            raise ConfigError(f"from_probs expects probs of shape (N, C) with C >= 1, got {p.shape}")
        if not np.isfinite(p).all():
            raise ConfigError("from_probs got NaN or inf probabilities; check the model outputs (softmax of logits)")
        c = p.shape[1]
        if p.shape[0] == 0:
            return cls.zero(c, bins)
        pred = p.argmax(axis=1)
        conf = p[np.arange(p.shape[0]), pred]
        b = np.clip(np.searchsorted(_bin_edges(bins), conf, side="right") - 1, 0, bins - 1)
        counts = np.bincount(pred, minlength=c)
        return cls(
            num_classes=c,
            bins=bins,
            n=p.shape[0],
            pred_counts=counts,
            conf_hist=np.bincount(pred * bins + b, minlength=c * bins).reshape(c, bins),
            conf_sum=np.asarray(np.bincount(pred, weights=conf, minlength=c), dtype=np.float64),
            prob_sum=p.sum(axis=0),
        )

    def __add__(self, other: object) -> ScoreStats:
        if not isinstance(other, ScoreStats):
            return NotImplemented
        if (self.num_classes, self.bins) != (other.num_classes, other.bins):
            raise ConfigError(
                f"cannot add ScoreStats with (C, B)=({self.num_classes}, {self.bins}) and "
                f"({other.num_classes}, {other.bins}); score every shard with the same label space and bins"
            )
        return ScoreStats(
            num_classes=self.num_classes,
            bins=self.bins,
            n=self.n + other.n,
            pred_counts=self.pred_counts + other.pred_counts,
            conf_hist=self.conf_hist + other.conf_hist,
            conf_sum=self.conf_sum + other.conf_sum,
            prob_sum=self.prob_sum + other.prob_sum,
        )

    def __eq__(self, other: object) -> bool:
        """Exact equality of every field (floats compared bit-for-bit by value)."""
        if not isinstance(other, ScoreStats):
            return NotImplemented
        return (
            (self.num_classes, self.bins, self.n) == (other.num_classes, other.bins, other.n)
            and np.array_equal(self.pred_counts, other.pred_counts)
            and np.array_equal(self.conf_hist, other.conf_hist)
            and np.array_equal(self.conf_sum, other.conf_sum)
            and np.array_equal(self.prob_sum, other.prob_sum)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-able dict; ``from_json(to_json())`` is exact (floats are written with repr)."""
        return {
            "version": _FORMAT_VERSION,
            "num_classes": self.num_classes,
            "bins": self.bins,
            "n": self.n,
            "pred_counts": self.pred_counts.tolist(),
            "conf_hist": self.conf_hist.tolist(),
            "conf_sum": self.conf_sum.tolist(),
            "prob_sum": self.prob_sum.tolist(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreStats:
        """Inverse of :meth:`to_json`."""
        version = d.get("version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ConfigError(f"ScoreStats JSON has version {version!r}, this engine reads {_FORMAT_VERSION}")
        missing = sorted(set(_JSON_FIELDS) - set(d))
        if missing:
            raise ConfigError(f"ScoreStats JSON lacks keys {missing}; re-run the score stage to rewrite it")
        return cls(**{k: d[k] for k in _JSON_FIELDS})

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """(B + 1,) bin edges ``i / B``."""
        return _bin_edges(self.bins)

    def count_at_least(self, tau: float) -> npt.NDArray[np.int64]:
        """Per-class count of rows with ``conf >= tau``, at bin resolution.

        Counts the bins whose lower edge is ``>= tau``. The result is exact when ``tau`` is a bin edge
        (``k / B``); otherwise ``tau`` is effectively rounded *up* to the next edge, so rows with
        ``tau <= conf < next edge`` are not counted (an undercount by at most one bin per class).
        ``tau > 1`` (or ``inf``) gives zeros; ``tau <= 0`` gives ``pred_counts``.

        Returns:
            (C,) int64.
        """
        first = int(np.searchsorted(self.edges[:-1], tau, side="left"))
        return np.asarray(self.conf_hist[:, first:].sum(axis=1), dtype=np.int64)

    def quantile(self, q: float) -> npt.NDArray[np.float64]:
        """Per-class q-quantile of the max confidence of rows predicted as c, at bin resolution.

        Returns the lower edge of the bin that holds the k-th smallest confidence of class c, with
        ``k = clip(ceil(q * n_c), 1, n_c)``. So ``count_at_least(quantile(q))[c] >= n_c - k + 1``: thresholding at
        the result keeps at least a ``1 - q`` fraction of the class (rounding towards keeping more).

        Returns:
            (C,) float64 in [0, 1); NaN for a class with no predicted rows.
        """
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"quantile q must be in [0, 1], got {q}")
        out = np.full(self.num_classes, np.nan)
        cum = np.cumsum(self.conf_hist, axis=1)
        for c in range(self.num_classes):
            n_c = int(self.pred_counts[c])
            if n_c == 0:
                continue
            k = min(max(int(np.ceil(q * n_c)), 1), n_c)
            out[c] = self.edges[int(np.searchsorted(cum[c], k, side="left"))]
        return out

    @property
    def mean_probs(self) -> npt.NDArray[np.float64]:
        """(C,) mean probability vector over all rows; NaN when ``n == 0``."""
        return self.prob_sum / self.n if self.n else np.full(self.num_classes, np.nan)

    @property
    def mean_conf(self) -> float:
        """Mean max confidence over all rows (a scalar); NaN when ``n == 0``."""
        return float(self.conf_sum.sum() / self.n) if self.n else float("nan")

    @property
    def conf_var(self) -> float:
        """Unbiased variance of the max confidence, from the histogram (bin centres around the exact mean).

        NaN when ``n < 2``. The bin-centre approximation is off by at most about ``1 / B``.
        """
        if self.n < 2:
            return float("nan")
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        return float((self.conf_hist.sum(axis=0) * (centres - self.mean_conf) ** 2).sum() / (self.n - 1))
