"""FreeMatch self-adaptive thresholds (SAT) and the self-adaptive fairness (SAF) term, in numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import ThresholdPolicy, register, split_probs


def _sum_norm(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(x / x.sum(), dtype=np.float64)


def _inv_or_zero(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.zeros_like(x)
    np.divide(1.0, x, out=out, where=x != 0)
    return out


def fairness_loss(
    mask: npt.ArrayLike, probs_strong: npt.ArrayLike, p_model: npt.ArrayLike, label_hist: npt.ArrayLike
) -> float:
    """FreeMatch SAF term L_f (reference section 3.3; USB ``freematch.py:entropy_loss``), numpy reference.

    Over the masked rows (``mask_b > 0``) of the strong-view probabilities Q (B, C):
    ``p_bar = mean_b Q_b``, ``h_bar = histogram of argmax_c Q_b / #masked``, then::

        a   = SumNorm(p_model * inv(label_hist))          # inv(0) := 0
        b   = SumNorm(p_bar * inv(h_bar))
        L_f = sum_c a(c) * log(b(c) + 1e-12)              # = -CE(a, b)

    with ``SumNorm(x) = x / sum(x)``. The total loss is ``L_s + lambda_u * L_u + w_f * L_f`` (w_f = 0.001 in USB's
    classic-CV configs); minimising L_f raises CE(a, b), pushing the masked predictions towards diversity.
    Returns 0.0 when no row is masked. In torch, ``a`` and the inverse histograms are detached; gradient flows
    only through ``p_bar``.

    Args:
        mask: (B,) the FreeMatch mask of the batch.
        probs_strong: (B, C) softmax of the strong-view logits.
        p_model: (C,) EMA class probability p~_t (``FreeMatchPolicy.p_model``).
        label_hist: (C,) EMA label histogram h~_t (``FreeMatchPolicy.label_hist``).
    """
    m = np.asarray(mask, dtype=np.float64) > 0
    q = np.asarray(probs_strong, dtype=np.float64)[m]
    if q.shape[0] == 0:
        return 0.0
    hist = np.bincount(q.argmax(axis=1), minlength=q.shape[1]).astype(np.float64) / q.shape[0]
    a = _sum_norm(np.asarray(p_model, dtype=np.float64) * _inv_or_zero(np.asarray(label_hist, dtype=np.float64)))
    b = _sum_norm(q.mean(axis=0) * _inv_or_zero(hist))
    return float((a * np.log(b + 1e-12)).sum())


@register("freematch")
class FreeMatchPolicy(ThresholdPolicy):
    """FreeMatch self-adaptive thresholds (Wang et al. 2023; reference section 3.3). Also serves as DTM-F.

    State: global ``time_p`` (tau_t), class-wise ``p_model`` (p~_t) and ``label_hist`` (h~_t), all starting at 1/C.
    Online, every step *before* masking, with momentum m and the weak batch q::

        tau_t  = m tau_{t-1} + (1-m) mean_b max_c q_b(c)
        p~_t   = m p~_{t-1}  + (1-m) mean_b q_b
        h~_t   = m h~_{t-1}  + (1-m) histogram(argmax q_b) / B
        T_t(c) = tau_t * p~_t(c) / max_c' p~_t(c')

    So ``T(c) <= tau_t`` with equality for the class of largest p~. An empty batch leaves the state unchanged.

    Offline (per round) adaptation: one round scores the whole pool once, so the EMA is replaced by the round's
    exact means (the limit of the EMA on a stationary input): ``tau = ScoreStats.mean_conf``,
    ``p~ = ScoreStats.mean_probs``, ``h~ = pred_counts / n``. Rounds are independent (no state carried over).
    ``use_quantile`` and ``clip_thresh`` (off in USB) are not implemented. ``momentum`` is USB's ``ema_p``.

    ``fairness_weight`` is w_f of the SAF term (:func:`fairness_loss`; USB ``ent_loss_ratio``, 0.001 in its classic-CV
    configs). The policy only carries it: the trainer adds ``fairness_weight * L_f`` to the loss when it is > 0
    (:attr:`use_fairness`). It does not change thresholds, masks or state.
    """

    update_before_mask = True

    def __init__(
        self,
        *,
        momentum: float = 0.999,
        fairness_weight: float = 0.0,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"freematch momentum must be in [0, 1), got {momentum}")
        if not (fairness_weight >= 0.0 and np.isfinite(fairness_weight)):
            raise ConfigError(
                f"freematch fairness_weight must be a finite number >= 0 (0 = off), got {fairness_weight}"
            )
        self.momentum = float(momentum)
        self.fairness_weight = float(fairness_weight)
        self._time_p: float | None = None
        self._p_model: npt.NDArray[np.float64] | None = None
        self._label_hist: npt.NDArray[np.float64] | None = None

    @property
    def use_fairness(self) -> bool:
        """True when the trainer must add ``fairness_weight * fairness_loss(...)`` (SAF) to the loss."""
        return self.fairness_weight > 0.0

    def _init_state(self) -> None:
        if self._p_model is None:
            assert self.num_classes is not None
            c = self.num_classes
            self._p_model, self._label_hist, self._time_p = np.full(c, 1.0 / c), np.full(c, 1.0 / c), 1.0 / c

    @property
    def time_p(self) -> float:
        """tau_t, the global (EMA of) mean max confidence."""
        self._init_state()
        assert self._time_p is not None
        return self._time_p

    @property
    def p_model(self) -> npt.NDArray[np.float64]:
        """(C,) p~_t, the (EMA of) mean class probability (a copy)."""
        self._init_state()
        assert self._p_model is not None
        return self._p_model.copy()

    @property
    def label_hist(self) -> npt.NDArray[np.float64]:
        """(C,) h~_t, the (EMA of) predicted-label histogram (a copy)."""
        self._init_state()
        assert self._label_hist is not None
        return self._label_hist.copy()

    def _fit(self, stats: ScoreStats) -> None:
        self._time_p = stats.mean_conf
        self._p_model = stats.mean_probs
        self._label_hist = stats.pred_counts / stats.n

    def _update(self, probs: npt.NDArray[np.float64], idx: npt.NDArray[np.int64] | None) -> None:
        if probs.shape[0] == 0:
            return
        self._init_state()
        assert self._p_model is not None and self._label_hist is not None and self._time_p is not None
        m = self.momentum
        conf, yhat = split_probs(probs)
        hist = np.bincount(yhat, minlength=probs.shape[1]) / probs.shape[0]
        self._time_p = m * self._time_p + (1.0 - m) * float(conf.mean())
        self._p_model = m * self._p_model + (1.0 - m) * probs.mean(axis=0)
        self._label_hist = m * self._label_hist + (1.0 - m) * hist

    def _thresholds(self) -> npt.NDArray[np.float64]:
        p = self.p_model
        ratio: npt.NDArray[np.float64] = p / p.max()  # ratio first: the top class gets exactly time_p
        return self.time_p * ratio

    def _state(self) -> dict[str, Any]:
        if self.num_classes is not None:
            self._init_state()
        return {
            "time_p": self._time_p,
            "p_model": None if self._p_model is None else self._p_model.copy(),
            "label_hist": None if self._label_hist is None else self._label_hist.copy(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        tp, pm, lh = state["time_p"], state["p_model"], state["label_hist"]
        self._time_p = None if tp is None else float(tp)
        self._p_model = None if pm is None else np.array(pm, dtype=np.float64)
        self._label_hist = None if lh is None else np.array(lh, dtype=np.float64)
        if self._p_model is not None:
            self.num_classes = self.num_classes or self._p_model.shape[0]
            if self._p_model.shape != (self.num_classes,):
                raise ConfigError(f"saved p_model has shape {self._p_model.shape}; policy has C={self.num_classes}")
