"""engine.train.fit: the one epoch routine every training runs (Ray Train worker, curation folds, sequence members)."""

from __future__ import annotations

import numpy as np
import torch

from engine.train.ema import WeightEMA
from engine.train.fit import Fit, fit_epoch
from engine.train.step import StepStats


def _fit(total_steps: int | None) -> Fit:
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    return Fit(model, opt, scheduler=sched, ema=WeightEMA(model, 0.5), total_steps=total_steps)


def _step(fit: Fit):
    def step(batch: float | None) -> StepStats | None:
        if batch is None:  # nothing to learn from this batch
            return None
        fit.optimizer.zero_grad()
        loss = -batch * fit.model.weight.sum()  # d loss / d w = -batch: each step adds lr * batch to both weights
        loss.backward()
        fit.optimizer.step()
        return StepStats(loss=batch, loss_s=batch, loss_u=0.0, rows=4, unlabelled_rows=2, weight_sum=1.5, soft_rows=1)

    return step


def test_fit_epoch_sums_steps_skips_none_and_steps_the_schedule_after_each_step() -> None:
    fit = _fit(total_steps=None)
    totals = fit_epoch(fit, [1.0, None, 2.0, 4.0], _step(fit))
    assert totals.steps == 3
    np.testing.assert_array_equal(totals.sums, [7.0, 7.0, 0.0, 3.0, 12.0, 6.0, 4.5, 3.0])
    assert totals.mean_loss == 7.0 / 3
    # LR 1, 0.5, 0.25 at the three optimiser steps: w = 1*1 + 0.5*2 + 0.25*4 = 3
    assert fit.model.weight.detach().tolist() == [[3.0, 3.0]]
    assert fit.scheduler is not None and fit.scheduler.last_epoch == 3
    assert totals.first_step_at is not None


def test_schedule_is_not_stepped_past_the_budget_and_ema_follows_every_step() -> None:
    fit = _fit(total_steps=2)
    fit_epoch(fit, [1.0, 2.0, 4.0, 4.0], _step(fit))
    assert fit.scheduler is not None and fit.scheduler.last_epoch == 2
    # LR 1, 0.5, 0.25, 0.25 (held at the budget's end; uncapped it would be 0.125): w = 1 + 1 + 1 + 1 = 4
    assert fit.model.weight.detach().tolist() == [[4.0, 4.0]]
    assert fit.ema is not None
    ema_w = fit.ema.module.weight.detach().tolist()[0][0]
    # EMA with warm-up decay min(0.5, (1+k)/(10+k)) after weights 1, 2, 3, 4 — ema_decay_at's rule, recomputed here
    from engine.train.ema import ema_decay_at

    e = 0.0
    for k, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        d = ema_decay_at(0.5, k)
        e = d * e + (1 - d) * w
    assert abs(ema_w - e) < 1e-6


def test_an_epoch_without_a_step_has_nan_mean_loss() -> None:
    fit = _fit(total_steps=None)
    totals = fit_epoch(fit, [None, None], _step(fit))
    assert totals.steps == 0 and np.isnan(totals.mean_loss) and totals.first_step_at is not None
