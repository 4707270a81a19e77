"""Precision-target thresholds: per class, the lowest confidence whose pseudo-labels are right often enough on val."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import register
from engine.thresholds.distribution import _FittedPolicy


@register("precision")
class PrecisionTargetPolicy(_FittedPolicy):
    """Per class, the lowest confidence at which the teacher's labels reach a target precision on val [offline only].

    Reference: the teacher's predictions on a labelled split the campaign never trains on (the threshold stage passes
    its val split; :meth:`set_reference`). For class c, the val rows the teacher predicts as c are sorted by
    confidence, highest first; admitting every row with confidence >= t, for t one of those confidences, has
    precision ``p_c(t) = correct / admitted``. Then::

        T(c) = max(tau_min, min{ t : p_c(t) >= target_precision and admitted(t) >= min_support })

    and ``T(c) = tau`` (the strict base threshold) for a class with no such t: too few val rows predicted c, or never
    precise enough. Ties of confidence are admitted together. The rule assumes the pool's classes are about as
    hard as val's (the same corpus); it raises the thresholds of classes the teacher confuses and lowers those of
    classes it gets right, the opposite of FlexMatch's learning effect.
    """

    needs_reference = True

    def __init__(
        self,
        *,
        target_precision: float = 0.8,
        min_support: int = 20,
        tau: float = 0.95,
        tau_min: float = 0.5,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 < target_precision <= 1.0:
            raise ConfigError(f"precision policy target_precision must be in (0, 1], got {target_precision}")
        if int(min_support) < 1:
            raise ConfigError(f"precision policy min_support must be >= 1, got {min_support}")
        if not (0.0 <= tau_min <= 1.0 and 0.0 <= tau <= 1.0):
            raise ConfigError(f"precision policy needs tau and tau_min in [0, 1], got {tau}, {tau_min}")
        self.target_precision = float(target_precision)
        self.min_support = int(min_support)
        self.tau = float(tau)
        self.tau_min = float(tau_min)
        self._reference: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]] | None = None
        self._support: npt.NDArray[np.int64] | None = None
        self._precision: npt.NDArray[np.float64] | None = None

    def set_reference(self, pred: npt.ArrayLike, conf: npt.ArrayLike, label: npt.ArrayLike) -> None:
        """The teacher's predicted class, confidence and the true label of each row of the labelled reference split."""
        p, c, y = (np.asarray(pred, np.int64), np.asarray(conf, np.float64), np.asarray(label, np.int64))
        if not p.shape == c.shape == y.shape or p.ndim != 1:
            raise ConfigError(f"precision reference needs three equal 1-D arrays, got {p.shape}, {c.shape}, {y.shape}")
        self._reference = (p, c, y)

    def _fit(self, stats: ScoreStats) -> None:
        if self._reference is None:
            raise ConfigError(
                "threshold.policy=precision needs the teacher's predictions on a labelled split (set_reference); the "
                "threshold stage gives it the campaign's val split: give the campaign an eval source with a val split"
            )
        pred, conf, label = self._reference
        n = stats.num_classes
        fitted = np.full(n, self.tau, dtype=np.float64)
        support = np.zeros(n, dtype=np.int64)
        precision = np.full(n, np.nan)
        for c in range(n):
            rows = pred == c
            t, ok = conf[rows], label[rows] == c
            order = np.argsort(-t, kind="stable")
            t, ok = t[order], ok[order]
            admitted = np.arange(1, len(t) + 1)
            correct = np.cumsum(ok)
            last_of_tie = np.append(t[1:] < t[:-1], True) if len(t) else np.zeros(0, bool)
            good = last_of_tie & (admitted >= self.min_support) & (correct >= self.target_precision * admitted - 1e-9)
            if good.any():
                k = int(np.flatnonzero(good)[-1])
                fitted[c], support[c], precision[c] = max(self.tau_min, t[k]), admitted[k], correct[k] / admitted[k]
        self._fitted, self._support, self._precision = fitted, support, precision

    def offline_rule(self) -> str:
        return (
            f"precision: T(c) = max(tau_min {self.tau_min}, lowest confidence t at which the teacher's val rows "
            f"predicted c with confidence >= t have precision >= {self.target_precision} over >= {self.min_support} "
            f"rows); tau {self.tau} for a class with no such t"
        )

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "val_support": None if self._support is None else self._support.copy(),
            "val_precision": None
            if self._precision is None
            else [None if np.isnan(x) else float(x) for x in self._precision],
            "reference_rows": None if self._reference is None else len(self._reference[0]),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        super()._load_state(state)
        s, p = state.get("val_support"), state.get("val_precision")
        self._support = None if s is None else np.array(s, dtype=np.int64)
        self._precision = None if p is None else np.array([np.nan if x is None else x for x in p], dtype=np.float64)
