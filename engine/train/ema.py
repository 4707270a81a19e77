"""An exponential moving average of the student's weights (Polyak averaging, as timm's ModelEmaV2 / TF's EMA).

After optimiser step k (k = 0, 1, ...) every floating-point parameter is updated as
``e ← d_k · e + (1 − d_k) · θ`` with ``d_k = min(d, (1 + k) / (10 + k))``: the warm-up term lets the average
follow the fast early changes of a short run instead of keeping the random initialisation for ~1/(1−d) steps.
Buffers (batch-norm running statistics, counters) are copied from the model, not averaged, so the averaged
weights are evaluated with the statistics the model has gathered. The average starts as a copy of the model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def ema_decay_at(decay: float, step: int) -> float:
    """The decay used at optimiser step ``step``: ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1.0 + step) / (10.0 + step))


class WeightEMA:
    """Holds the averaged copy of a model (``self.module``, in eval mode, no gradients)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        """Number of :meth:`update` calls so far (the next update uses ``ema_decay_at(decay, updates)``)."""
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._param_names = frozenset(name for name, _ in self.module.named_parameters())

    def update(self, model: torch.nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (same architecture as at construction)."""
        import torch

        d = ema_decay_at(self.decay, self.updates)
        with torch.no_grad():
            ema_state = self.module.state_dict()
            for name, value in model.state_dict().items():
                target = ema_state[name]
                if target.dtype.is_floating_point and name in self._param_names:
                    target.mul_(d).add_(value.detach(), alpha=1.0 - d)
                else:
                    target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        """The averaged weights and buffers plus the update count (for resume)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
