"""The student's optimiser (SGD Nesterov or AdamW), its cosine LR schedule and the autocast dtype."""

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
