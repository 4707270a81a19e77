"""SoftMatch truncated-Gaussian sample weights with optional uniform alignment, in numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import ThresholdPolicy, register, split_probs

_DA_EPS = 1e-6  # USB DistAlignEMAHook's smoothing of p_target / p_model


@register("softmatch")
class SoftMatchPolicy(ThresholdPolicy):
    """SoftMatch (Chen et al. 2023; reference section 3.4): soft weights from a truncated Gaussian.

    State: ``mu`` and ``var`` (EMA mean and unbiased variance of max q'), initialised to 1/C and 1.0, and the
    uniform-alignment EMA ``p_model`` (None until the first batch, which sets it to that batch's mean).
    Online, every step *before* weighting, with momentum m::

        p_model <- mean_b q_b (first batch), else m p_model + (1-m) mean_b q_b     (if uniform_align)
        q'_b     = Normalise(q_b * (1/C + 1e-6) / (p_model + 1e-6))               (q' = q without alignment)
        mu_t     = m mu_{t-1}  + (1-m) mean_b max q'_b
        var_t    = m var_{t-1} + (1-m) var_b(max q'_b)      (unbiased; skipped for a batch of one row)
        w_b      = exp(-(min(max q'_b - mu_t, 0))^2 / (2 var_t / n_sigma^2))

    USB divides the variance by n_sigma^2 (n_sigma = 2), so the effective std is sigma_t / 2. Weights are in
    (0, 1] (they may underflow to 0 far below mu) and exactly 1 for ``max q' >= mu_t``. The hard pseudo-label
    is the argmax of the *unaligned* q. ``thresholds()`` returns mu_t for every class (the aligned confidence at
    which the weight reaches 1) and ``mask`` is ``1[max q' >= mu_t]``. ``per_class`` (USB default off) is not
    implemented.

    Offline (per round) adaptation: ``mu = ScoreStats.mean_conf`` and ``var = ScoreStats.conf_var`` (histogram,
    unbiased; 1.0 when n < 2) of the round's *unaligned* confidences; ``p_model`` is cleared so that later
    ``weights``/``mask`` calls use unaligned confidences too, consistent with the fitted statistics.
    """

    update_before_mask = True

    def __init__(
        self,
        *,
        momentum: float = 0.999,
        uniform_align: bool = True,
        n_sigma: float = 2.0,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"softmatch momentum must be in [0, 1), got {momentum}")
        if n_sigma <= 0:
            raise ConfigError(f"softmatch n_sigma must be > 0, got {n_sigma}")
        self.momentum = float(momentum)
        self.uniform_align = bool(uniform_align)
        self.n_sigma = float(n_sigma)
        self._mu: float | None = None
        self._var: float = 1.0
        self._p_model: npt.NDArray[np.float64] | None = None

    @property
    def mu(self) -> float:
        """mu_t: EMA mean of the (aligned) max confidence."""
        assert self.num_classes is not None
        return 1.0 / self.num_classes if self._mu is None else self._mu

    @property
    def var(self) -> float:
        """sigma^2_t: EMA unbiased variance of the (aligned) max confidence."""
        return self._var

    @property
    def p_model(self) -> npt.NDArray[np.float64] | None:
        """(C,) uniform-alignment EMA of the mean class probability, or None before the first batch."""
        return None if self._p_model is None else self._p_model.copy()

    def aligned(self, probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(B, C) q' = uniform-aligned probabilities (q itself when alignment is off or p_model is unset)."""
        q = np.asarray(probs, dtype=np.float64)
        if not self.uniform_align or self._p_model is None:
            return q
        assert self.num_classes is not None
        a = q * (1.0 / self.num_classes + _DA_EPS) / (self._p_model + _DA_EPS)
        return np.asarray(a / a.sum(axis=1, keepdims=True), dtype=np.float64)

    def _fit(self, stats: ScoreStats) -> None:
        self._mu = stats.mean_conf
        self._var = stats.conf_var if stats.n >= 2 else 1.0
        self._p_model = None

    def _update(self, probs: npt.NDArray[np.float64], idx: npt.NDArray[np.int64] | None) -> None:
        if probs.shape[0] == 0:
            return
        m = self.momentum
        if self.uniform_align:
            batch_mean = probs.mean(axis=0)
            self._p_model = batch_mean if self._p_model is None else m * self._p_model + (1.0 - m) * batch_mean
        conf = self.aligned(probs).max(axis=1)
        self._mu = m * self.mu + (1.0 - m) * float(conf.mean())
        if conf.shape[0] >= 2:
            self._var = m * self._var + (1.0 - m) * float(conf.var(ddof=1))

    def _thresholds(self) -> npt.NDArray[np.float64]:
        assert self.num_classes is not None
        return np.full(self.num_classes, self.mu)

    def _never(self, probs: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        _, yhat = split_probs(probs)
        return np.isin(yhat, list(self.never_label))

    def weights(self, probs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B,) float32 SoftMatch weights in (0, 1]; 0 for rows whose pseudo-label is in ``never_label``."""
        self._require_classes(np.asarray(probs))
        gap = np.minimum(self.aligned(probs).max(axis=1) - self.mu, 0.0)
        w = np.exp(-(gap**2) / (2.0 * self._var / self.n_sigma**2))
        w[self._never(probs)] = 0.0
        return np.asarray(w, dtype=np.float32)

    def _check_offline(self) -> None:
        if self.uniform_align and self._p_model is not None:
            raise ConfigError(
                "softmatch row weights from (pred, conf) need the offline state (fit clears the alignment); this "
                "policy carries an online p_model: use weights(probs)"
            )

    def row_weights(self, pred: npt.ArrayLike, conf: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(N,) float32 ``exp(-(min(conf - mu, 0))^2 / (2 var / n_sigma^2))`` of the fitted (offline) state, so
        :meth:`weights` of rows whose max probability is ``conf``; 0 for ``never_label`` classes."""
        self._check_offline()
        c = np.asarray(conf, dtype=np.float64)
        gap = np.minimum(c - self.mu, 0.0)
        w = np.exp(-(gap**2) / (2.0 * self._var / self.n_sigma**2))
        w[np.isin(np.asarray(pred, dtype=np.int64), list(self.never_label))] = 0.0
        return np.asarray(w, dtype=np.float32)

    def admission(self, min_weight: float) -> npt.NDArray[np.float64]:
        """(C,) ``mu - (sqrt(var) / n_sigma) * sqrt(2 ln(1 / min_weight))`` clipped at 0, the confidence where the
        weight reaches ``min_weight`` (0 for ``min_weight`` 0: every row; ``inf`` for ``never_label``)."""
        self._check_offline()
        if not 0.0 <= min_weight <= 1.0:
            raise ConfigError(f"softmatch min_weight must be in [0, 1], got {min_weight}")
        assert self.num_classes is not None
        if min_weight == 0.0:
            low = 0.0
        else:
            low = max(0.0, self.mu - np.sqrt(self._var) / self.n_sigma * np.sqrt(2.0 * np.log(1.0 / min_weight)))
        t = np.full(self.num_classes, low, dtype=np.float64)
        t[list(self.never_label)] = np.inf
        return t

    def mask(self, probs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B,) float32 in {0, 1}: ``1[max q'_b >= mu_t]`` (the rows of weight exactly 1)."""
        self._require_classes(np.asarray(probs))
        m = self.aligned(probs).max(axis=1) >= self.mu
        m[self._never(probs)] = False
        return np.asarray(m, dtype=np.float32)

    def _state(self) -> dict[str, Any]:
        return {"mu": self._mu, "var": self._var, "p_model": None if self._p_model is None else self._p_model.copy()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._mu = None if state["mu"] is None else float(state["mu"])
        self._var = float(state["var"])
        pm = state["p_model"]
        self._p_model = None if pm is None else np.array(pm, dtype=np.float64)
        if self._p_model is not None and self.num_classes is not None and self._p_model.shape != (self.num_classes,):
            raise ConfigError(f"saved p_model has shape {self._p_model.shape}, policy has {self.num_classes} classes")
