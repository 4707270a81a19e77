"""The student's optimiser (SGD Nesterov or AdamW), its LR schedule (cosine, one-cycle, warm-up + cosine) and the
autocast dtype."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from engine.config import TrainConfig

MOMENTUM = 0.9
"""SGD momentum (Nesterov), as in FixMatch / USB."""


def cosine_factor(step: int, *, total_steps: int) -> float:
    """FixMatch's cosine LR factor ``cos(7*pi*k / (16*K))``: 1 at step 0, about 0.2 at the last step K."""
    return math.cos(7.0 * math.pi * min(step, total_steps) / (16.0 * max(total_steps, 1)))


def warmup_cosine_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up ``(k+1)/W`` over the first W steps, then ``(1 + cos(pi * (k-W) / (K-W))) / 2`` down to 0."""
    k = min(step, total_steps)
    if k < warmup_steps:
        return (k + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (k - warmup_steps) / max(total_steps - warmup_steps, 1)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``train.schedule`` LR schedule over ``cfg.epochs * steps_per_epoch`` optimiser steps.

    ``cosine``: FixMatch's ``cos(7πk/16K)`` factor. ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with
    ``max_lr = cfg.lr`` and its defaults (pct_start 0.3, div_factor 25, final_div_factor 1e4, cosine annealing,
    momentum / beta1 cycled 0.95 → 0.85 → 0.95). ``warmup_cosine``: :func:`warmup_cosine_factor` with
    ``round(cfg.warmup_epochs * steps_per_epoch)`` warm-up steps. The caller never steps past the budget
    (OneCycleLR refuses to).
    """
    import functools

    import torch

    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(cosine_factor, total_steps=total))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "warmup_cosine":
        warm = round(cfg.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_cosine_factor, total_steps=total, warmup_steps=warm)
        )
    raise ConfigError(f"train.schedule must be cosine, onecycle or warmup_cosine, got {cfg.schedule!r}")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum 0.9) or AdamW; weight decay on weight matrices / kernels only, not on biases or norms.

    Raises:
        ConfigError: ``cfg.optimizer`` is neither ``sgd`` nor ``adamw``.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=MOMENTUM, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ConfigError(f"train.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 (fp16 where bf16 is unsupported) on CUDA with ``mixed_precision``; None (full fp32) otherwise."""
    import torch

    if not cfg.mixed_precision or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
