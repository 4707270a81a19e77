"""The one fit routine: an epoch of optimiser steps over batches, shared by every training in the engine.

The Ray Train worker (engine.train.loop), curation's K-fold fits (engine.stages.curation) and the sequence members
fitted on frozen CNN features (engine.train.temporal) all run :func:`fit_epoch`; they differ only in their ``step``
(what one batch does to the model) and in where their batches come from. The epoch owns the rest: the weight EMA
after each step, the LR schedule (never stepped past its budget), the summed step statistics and the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from engine.train.ema import WeightEMA
    from engine.train.step import StepStats

B = TypeVar("B")

SUMS = ("loss", "loss_s", "loss_u", "steps", "rows", "unlabelled_rows", "weight_sum", "soft_rows")
"""The columns of :attr:`EpochTotals.sums`, in order."""


@dataclass
class Fit:
    """What steps with the model: its optimiser, LR schedule, grad scaler and optional weight EMA."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: Any = None
    """``torch.amp.GradScaler`` (enabled only for fp16 autocast); None for steps that do not scale."""
    ema: WeightEMA | None = None
    total_steps: int | None = None
    """Optimiser steps of the whole budget: the schedule is not stepped past it (OneCycleLR refuses to)."""


@dataclass(frozen=True)
class EpochTotals:
    """Sums of one epoch's :class:`~engine.train.step.StepStats` (columns :data:`SUMS`) and its timings."""

    sums: np.ndarray
    seconds: float
    first_step_at: float | None
    """Wall clock of the first batch (start-up cost = this minus the stage's start, bench/train.py)."""

    @property
    def steps(self) -> int:
        return int(self.sums[3])

    @property
    def mean_loss(self) -> float:
        """Mean step loss; NaN for an epoch without a step."""
        return float(self.sums[0] / self.sums[3]) if self.sums[3] else float("nan")


def fit_epoch(fit: Fit, batches: Iterable[B], step: Callable[[B], StepStats | None]) -> EpochTotals:
    """Run ``step`` on every batch (a step returning None was skipped: nothing to learn from that batch), then
    update the EMA and step the LR schedule after each optimiser step."""
    from engine.models.checkpoint import unwrap_model

    sums = np.zeros(len(SUMS), dtype=np.float64)
    t0 = time.perf_counter()
    first_step_at: float | None = None
    for batch in batches:
        if first_step_at is None:
            first_step_at = time.time()
        st = step(batch)
        if st is None:
            continue
        if fit.ema is not None:
            fit.ema.update(unwrap_model(fit.model))
        if fit.scheduler is not None and (fit.total_steps is None or fit.scheduler.last_epoch < fit.total_steps):
            fit.scheduler.step()
        sums += (st.loss, st.loss_s, st.loss_u, 1, st.rows, st.unlabelled_rows, st.weight_sum, st.soft_rows)
    return EpochTotals(sums, time.perf_counter() - t0, first_step_at)
