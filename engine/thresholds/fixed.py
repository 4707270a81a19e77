"""Fixed (FixMatch) confidence threshold: the mandatory baseline of every comparison."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds.base import ThresholdPolicy, register


@register("fixed")
class FixedPolicy(ThresholdPolicy):
    """FixMatch (Sohn et al. 2020; reference section 3.1): ``w_b = 1[conf_b >= tau]`` for every class.

    No state, so the online and offline forms coincide: ``fit`` ignores the statistics except for C.
    USB default ``tau = 0.95`` (``p_cutoff``).
    """

    def __init__(self, *, tau: float = 0.95, num_classes: int | None = None, never_label: Sequence[int] = ()) -> None:
        super().__init__(num_classes=num_classes, never_label=never_label)
        if not 0.0 <= tau <= 1.0:
            raise ConfigError(f"fixed threshold tau must be in [0, 1], got {tau}")
        self.tau = float(tau)

    def _fit(self, stats: ScoreStats) -> None:
        return None

    def _thresholds(self) -> npt.NDArray[np.float64]:
        assert self.num_classes is not None
        return np.full(self.num_classes, self.tau)
