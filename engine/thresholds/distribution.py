"""Offline thresholds read off the round's confidence histogram: per-class quantile and per-class top-K."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import ThresholdPolicy, register


class _FittedPolicy(ThresholdPolicy):
    """Offline-only policy whose state is just the thresholds of the last fit."""

    supports_online = False

    def __init__(self, *, num_classes: int | None = None, never_label: Sequence[int] = ()) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        self._fitted: npt.NDArray[np.float64] | None = None

    def _thresholds(self) -> npt.NDArray[np.float64]:
        if self._fitted is None:
            raise ConfigError(f"policy {self.name!r} has no thresholds yet; call fit(stats) on the round's stats")
        return self._fitted

    def _state(self) -> dict[str, Any]:
        return {"fitted": None if self._fitted is None else self._fitted.copy()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        f = state["fitted"]
        self._fitted = None if f is None else np.array(f, dtype=np.float64)
        if self._fitted is not None:
            self.num_classes = self.num_classes or self._fitted.shape[0]


@register("quantile")
class QuantilePolicy(_FittedPolicy):
    """Per-class quantile: ``T(c) = max(tau_min, Q_q(conf | yhat = c))`` [design choice, offline only].

    ``Q_q`` is :meth:`ScoreStats.quantile` (lower edge of the bin holding the quantile, so thresholding keeps at
    least a ``1 - q`` fraction of each class). A class with no predicted rows gets 1.0 (nothing to select).
    It is a per-round rule by construction; FreeMatch's ``use_quantile`` (a batch quantile of the global
    confidence) is the per-step analogue.
    """

    def __init__(
        self,
        *,
        quantile: float = 0.8,
        tau_min: float = 0.0,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 <= quantile <= 1.0 or not 0.0 <= tau_min <= 1.0:
            raise ConfigError(f"quantile policy needs quantile and tau_min in [0, 1], got {quantile}, {tau_min}")
        self.quantile = float(quantile)
        self.tau_min = float(tau_min)

    def _fit(self, stats: ScoreStats) -> None:
        q = np.nan_to_num(stats.quantile(self.quantile), nan=1.0)
        self._fitted = np.maximum(self.tau_min, q)


@register("topk")
class TopKPolicy(_FittedPolicy):
    """Per-class top-K: the threshold that keeps about ``top_k`` rows per class [design choice, offline only].

    ``T(c)`` is the highest bin lower edge ``e`` with ``count_at_least(e)[c] >= top_k``, so at least K rows of
    class c pass (more when the K-th row's bin holds ties); a class with fewer than K rows gets 0.0 (all kept).
    Then ``T(c) = max(tau_min, T(c))``, which may keep fewer than K. For an exact cap use the select stage's
    per-class cap; this policy only places the threshold at bin resolution.
    """

    def __init__(
        self,
        *,
        top_k: int = 1000,
        tau_min: float = 0.0,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if int(top_k) < 1 or not 0.0 <= tau_min <= 1.0:
            raise ConfigError(f"topk policy needs top_k >= 1 and tau_min in [0, 1], got {top_k}, {tau_min}")
        self.top_k = int(top_k)
        self.tau_min = float(tau_min)

    def _fit(self, stats: ScoreStats) -> None:
        tail = np.cumsum(stats.conf_hist[:, ::-1], axis=1)[:, ::-1]  # tail[c, i] = rows of c in bins >= i
        ok = tail >= self.top_k
        last = np.where(ok.any(axis=1), stats.bins - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
        self._fitted = np.maximum(self.tau_min, stats.edges[last])
