"""Multi-head networks: a feature backbone plus a classifier head (linear, cascade, ESR) and an optional VA head.

One model interface for the whole engine: a network returns either a (B, C) logits tensor (the plain nets) or a
small dict of named outputs. Every dict holds ``logits`` (B, C) whose softmax is the class distribution in the
campaign's label space; heads add ``coarse`` / ``fine`` (cascade), ``branches`` / ``branch_features`` (ESR) and
``va`` (B, 2) in [-1, 1] (valence, arousal); nets with sequence members add the (B, D) ``features``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Outputs = dict[str, torch.Tensor]
"""Named outputs of a multi-head network (see the module docstring)."""


class LinearHead(nn.Module):
    """One linear classifier: ``{"logits": (B, C)}``."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, feat: torch.Tensor) -> Outputs:
        return {"logits": self.fc(feat)}


class MultiHeadNet(nn.Module):
    """``backbone`` (B, in_chans, S, S) -> (B, D) features, then ``head`` (a dict of outputs) and, when ``va_head``,
    ``va = tanh(Linear(D, 2))``: valence and arousal in [-1, 1]."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        head: nn.Module,
        *,
        va_head: bool = False,
        temporal: nn.ModuleDict | None = None,
    ) -> None:
        """``temporal``: sequence members (engine.models.sequence) applied outside ``forward`` on feature
        sequences; when given, ``forward`` also returns the (B, D) backbone ``features``."""
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.va = nn.Linear(feature_dim, 2) if va_head else None
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> Outputs:
        feat = self.backbone(x)
        out: Outputs = self.head(feat)
        if self.va is not None:
            out["va"] = torch.tanh(self.va(feat))
        if self.temporal is not None:
            out["features"] = feat
        return out


def as_outputs(out: Any) -> Outputs:
    """A model's output as a dict: a plain logits tensor becomes ``{"logits": out}``."""
    if isinstance(out, torch.Tensor):
        return {"logits": out}
    if isinstance(out, dict) and "logits" in out:
        return out
    raise TypeError(f"a model must return a logits tensor or a dict with 'logits', got {type(out).__name__}")


def outputs_to_probs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(probs (B, C), branch_probs (B, M, C) or None, va (B, 2) or None)``, all float32, from a model's output."""
    o = as_outputs(out)
    probs = o["logits"].float().softmax(dim=-1)
    branches = o.get("branches")
    branch_probs = None if branches is None else branches.float().softmax(dim=-1)
    va = o.get("va")
    return probs, branch_probs, None if va is None else va.float()
