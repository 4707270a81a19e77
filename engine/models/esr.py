"""ESR (Ensembles with Shared Representations, Siqueira et al. 2020) head: N branches on one shared backbone.

The backbone is the shared representation; each branch is a hidden layer (Linear-ReLU, its output is the branch's
features for the Diversified-ESR diversity loss, Heidari & Iosifidis 2022) and its own linear classifier. The
ensemble's distribution is the mean of the branch softmaxes; ``logits`` is its log, so ``softmax(logits)`` gives it
back. Outputs ``{"logits": (B, C), "branches": (B, M, C), "branch_features": (B, M, H)}``.

Unlike the paper's convolutional branches, the branches here share the whole backbone and differ only in their
heads, so any engine net or timm model can be the shared base.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ESRHead(nn.Module):
    """``branches`` Linear(D, hidden)-ReLU-Linear(hidden, C) branches over shared (B, D) features."""

    def __init__(self, feature_dim: int, num_classes: int, *, branches: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.ModuleList(
            [nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True)) for _ in range(branches)]
        )
        self.classifiers = nn.ModuleList([nn.Linear(hidden, num_classes) for _ in range(branches)])

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = [h(feat) for h in self.hidden]
        branches = torch.stack([c(f) for c, f in zip(self.classifiers, feats, strict=True)], dim=1)
        log_mean = torch.logsumexp(torch.log_softmax(branches.float(), dim=-1), dim=1) - math.log(len(feats))
        return {"logits": log_mean, "branches": branches, "branch_features": torch.stack(feats, dim=1)}
