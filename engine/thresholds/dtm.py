"""DTM-R (reconstructed Dynamic Threshold Module) and FlexMatch curriculum thresholds, online and offline."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import ThresholdPolicy, register, split_probs

_LN2 = math.log(2.0)

MAPPINGS: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    # FlexMatch default (paper and USB): convex, M(0) = 0, M(1) = 1.
    "convex": lambda x: x / (2.0 - x),
    # Identity: the plain "threshold proportional to learning effect" form.
    "linear": lambda x: x,
    # The three alternatives in USB's flexmatch/utils.py comments (reference section 3.2). M(0) > 0 for these,
    # so thresholds start at M(0) * tau (0.42, 0.5, 0.5 of tau) rather than at the floor.
    "concave": lambda x: (np.log(x + 1.0) + 0.5) / (_LN2 + 0.5),
    "linear_offset": lambda x: (x + 1.0) / 2.0,
    "low_limit": lambda x: 1.0 / (2.0 - x),
}
"""Non-linear maps M: [0, 1] -> [0, 1] with M(1) = 1 and M increasing, by name."""


def learning_effect(sigma: npt.ArrayLike, n_unused: int, *, warmup: bool) -> npt.NDArray[np.float64]:
    """Return beta(c) = sigma(c) / max(max_c' sigma(c'), N_unused) (warm-up) or sigma(c) / max sigma (no warm-up).

    Args:
        sigma: (C,) counts of samples whose (latest) confident prediction is c.
        n_unused: number of samples never confident.
        warmup: include N_unused in the normaliser (FlexMatch ``thresh_warmup``).

    Returns:
        (C,) float64 in [0, 1]; all zeros when the normaliser is 0.
    """
    s = np.asarray(sigma, dtype=np.float64)
    denom = max(float(s.max(initial=0.0)), float(n_unused)) if warmup else float(s.max(initial=0.0))
    return s / denom if denom > 0 else np.zeros_like(s)


@register("dtm_r")
class DTMRPolicy(ThresholdPolicy):
    """DTM-R (reference section 2.3): ``T(c) = max(tau_min, tau * M(beta(c)))``, tau = tau_max.

    beta is the learning effect of :func:`learning_effect`; M is a :data:`MAPPINGS` entry (``convex`` x/(2-x)
    is FlexMatch's default). Invariant: ``tau_min <= T(c) <= tau`` for every class.

    Online (per step, FlexMatch CPL order): ``step`` masks with beta from the previous step, then for every row
    with ``conf >= tau`` (the fixed base, not T) sets ``cache[idx] = yhat`` and recomputes
    ``sigma(c) = #{cache == c}``, ``N_unused = #{cache == -1}`` and beta; the recompute is skipped while the
    cache is all -1, so beta stays 0. A cache entry is only ever overwritten by a newer confident prediction, never
    reset to -1. (USB also skips the recompute when every sample is cached as one single class; here beta is
    recomputed then.) Duplicate ``idx`` in one batch: the last row wins.

    Offline (per round) adaptation: the round's teacher scores every unlabelled row once, so the cache is replaced
    by the round's predictions: ``sigma(c) = #{yhat = c, conf >= tau}`` (``ScoreStats.count_at_least(tau)``, bin
    resolution), ``N_unused = n - sum sigma``.

    Warm-up (``warmup``): ``True`` / ``False`` apply to both forms; ``None`` (the default) means on online
    (FlexMatch and USB: early in training, when few rows are confident, every threshold stays low) and off offline.
    Offline, the warm-up normaliser compares sigma with the rows of the pool below tau, which a round's trained
    teacher leaves in the majority (FER2013, 10 % labels: about 21,700 of 24,082 below 0.95); beta is then below
    0.1 for every class and every threshold sits at tau_min, i.e. the module is one fixed threshold. Without it,
    ``beta(c) = sigma(c) / max sigma``: the class the teacher is most often sure of gets tau, and the others get
    ``tau * M(beta)`` (at least tau_min) in proportion to how often the teacher is sure of them.
    """

    update_before_mask = False

    def __init__(
        self,
        *,
        tau: float = 0.95,
        tau_min: float = 0.5,
        mapping: str = "convex",
        warmup: bool | None = None,
        num_unlabelled: int | None = None,
        num_classes: int | None = None,
        never_label: Sequence[int] = (),
    ) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 <= tau_min <= tau <= 1.0:
            raise ConfigError(f"{self.name} needs 0 <= tau_min <= tau <= 1, got tau_min={tau_min}, tau={tau}")
        if mapping not in MAPPINGS:
            raise ConfigError(f"unknown mapping {mapping!r} for {self.name}; valid: {', '.join(MAPPINGS)}")
        if num_unlabelled is not None and int(num_unlabelled) < 1:
            raise ConfigError(f"num_unlabelled must be >= 1, got {num_unlabelled}")
        self.tau = float(tau)
        self.tau_min = float(tau_min)
        self.mapping = mapping
        self.warmup = None if warmup is None else bool(warmup)
        self.num_unlabelled = None if num_unlabelled is None else int(num_unlabelled)
        self._cache: npt.NDArray[np.int64] | None = (
            None if self.num_unlabelled is None else np.full(self.num_unlabelled, -1, dtype=np.int64)
        )
        self._beta: npt.NDArray[np.float64] | None = None

    @property
    def beta(self) -> npt.NDArray[np.float64]:
        """(C,) current learning effect (zeros before any fit or update)."""
        assert self.num_classes is not None
        return np.zeros(self.num_classes) if self._beta is None else self._beta.copy()

    @property
    def cache(self) -> npt.NDArray[np.int64]:
        """(N_u,) latest confident prediction per unlabelled row, -1 if never confident (a copy)."""
        return self._require_cache().copy()

    def _fit(self, stats: ScoreStats) -> None:
        sigma = stats.count_at_least(self.tau)
        self._beta = learning_effect(sigma, stats.n - int(sigma.sum()), warmup=bool(self.warmup))  # None: off

    def offline_rule(self) -> str:
        """The offline rule with this policy's tau, tau_min, map and normaliser."""
        norm = "max(max_c' sigma(c'), N_unused) (warm-up on)" if self.warmup else "max_c' sigma(c') (warm-up off)"
        return (
            f"{self.name}: T(c) = max(tau_min={self.tau_min:g}, tau={self.tau:g} * M(beta(c))), M = {self.mapping}; "
            f"beta(c) = sigma(c) / {norm}; sigma(c) = pool rows predicted c with confidence >= tau"
            + (", N_unused = pool rows below tau" if self.warmup else "")
        )

    def _require_cache(self) -> npt.NDArray[np.int64]:
        if self._cache is None:
            raise ConfigError(f"online {self.name} needs num_unlabelled (the unlabelled pool size N_u)")
        return self._cache

    def _update(self, probs: npt.NDArray[np.float64], idx: npt.NDArray[np.int64] | None) -> None:
        cache = self._require_cache()
        if idx is None or idx.shape != (probs.shape[0],):
            got = None if idx is None else idx.shape
            raise ConfigError(f"online {self.name} needs idx (sample indices) of shape ({probs.shape[0]},), got {got}")
        if idx.size and (idx.min() < 0 or idx.max() >= cache.shape[0]):
            raise ConfigError(f"idx values must be in [0, {cache.shape[0]}), got [{idx.min()}, {idx.max()}]")
        conf, yhat = split_probs(probs)
        sel = conf >= self.tau
        cache[idx[sel]] = yhat[sel]
        if (cache >= 0).any():
            assert self.num_classes is not None
            counts = np.bincount(cache + 1, minlength=self.num_classes + 1)
            self._beta = learning_effect(counts[1:], int(counts[0]), warmup=self.warmup is not False)  # None: on

    def _thresholds(self) -> npt.NDArray[np.float64]:
        return np.maximum(self.tau_min, self.tau * MAPPINGS[self.mapping](self.beta))

    def _state(self) -> dict[str, Any]:
        return {
            "beta": None if self._beta is None else self._beta.copy(),
            "cache": None if self._cache is None else self._cache.copy(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        beta, cache = state["beta"], state["cache"]
        self._beta = None if beta is None else np.array(beta, dtype=np.float64)
        if self._beta is not None and self.num_classes is not None and self._beta.shape != (self.num_classes,):
            raise ConfigError(f"saved beta has shape {self._beta.shape}, policy has {self.num_classes} classes")
        if cache is not None:
            arr = np.array(cache, dtype=np.int64)
            if self.num_unlabelled is not None and arr.shape != (self.num_unlabelled,):
                raise ConfigError(f"saved cache has shape {arr.shape}; policy num_unlabelled={self.num_unlabelled}")
            self._cache = arr
        else:
            self._cache = None if self.num_unlabelled is None else np.full(self.num_unlabelled, -1, dtype=np.int64)


@register("flexmatch")
class FlexMatchPolicy(DTMRPolicy):
    """FlexMatch Curriculum Pseudo Labelling (Zhang et al. 2021; reference section 3.2) = DTM-R with tau_min = 0.

    ``T(c) = tau * M(beta(c))``; at the start every beta is 0 so T = 0 and every pseudo-label is used (with the
    convex map). Online and offline forms, state and order exactly as :class:`DTMRPolicy`. USB defaults:
    ``tau = 0.95``, ``mapping = "convex"``, warm-up on (``warmup = None`` keeps it on online, off offline).
    Parameters: those of :class:`DTMRPolicy` except ``tau_min`` (fixed at 0; passing it is an error).
    """

    def __init__(self, **params: Any) -> None:
        if "tau_min" in params:
            raise ConfigError(
                f"flexmatch has no floor (tau_min = 0 by definition), got tau_min={params['tau_min']}; "
                "use policy dtm_r for a floor"
            )
        super().__init__(tau_min=0.0, **params)

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """DTM-R's parameters without ``tau_min`` (fixed at 0)."""
        return tuple(n for n in DTMRPolicy.param_names() if n != "tau_min")
