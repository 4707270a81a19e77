"""CFC-SP coarse-to-fine cascade: a coarse head over the coarse5 classes and a fine head over the Negative classes.

Product rule: ``P(c) = P_coarse(c)`` for a coarse class c (Neutral, Happiness, Surprise, Other) and
``P(f) = P_coarse(Negative) · P_fine(f | Negative)`` for a fine class f (Anger, Disgust, Fear, Sadness). The rows
sum to 1 because both heads are softmax distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engine.errors import ConfigError
from engine.labels import COARSE5, COARSE_OF, NEGATIVE4, LabelSpace

NEGATIVE = "Negative"


@dataclass(frozen=True)
class CascadeMap:
    """How the classes of a label space split into the cascade's coarse and fine heads."""

    coarse: tuple[str, ...]
    """Coarse head classes, in coarse5 order, restricted to those the space reaches (Negative last)."""
    fine: tuple[str, ...]
    """Fine head classes (the space's Negative classes), in negative4 order."""
    coarse_of: tuple[int, ...]
    """For each class of the space: index of its coarse class in ``coarse``."""
    fine_of: tuple[int, ...]
    """For each class of the space: index in ``fine``, or -1 for a coarse class."""


def cascade_map(space: LabelSpace) -> CascadeMap:
    """The coarse/fine split of ``space`` (abaw8: coarse5 + negative4; basic7: coarse5 without Other + negative4).

    Raises:
        ConfigError: a class without a coarse class (Contempt), a coarse space itself, or fewer than 2 fine classes.
    """
    missing = [c for c in space.classes if c not in COARSE_OF or c == NEGATIVE]
    if missing:
        raise ConfigError(
            f"model.head=cascade cannot split label space {space.name} ({', '.join(space.classes)}): "
            f"{', '.join(missing)} has no coarse/fine place; use abaw8 or basic7"
        )
    fine = tuple(c for c in NEGATIVE4.classes if c in space.classes)
    if len(fine) < 2:
        raise ConfigError(
            f"model.head=cascade needs at least 2 Negative classes (Anger, Disgust, Fear, Sadness) in label space "
            f"{space.name}; it has {list(fine)}. Use model.head=linear"
        )
    reached = {COARSE_OF[c] for c in space.classes}
    coarse = tuple(c for c in COARSE5.classes if c in reached)
    return CascadeMap(
        coarse=coarse,
        fine=fine,
        coarse_of=tuple(coarse.index(COARSE_OF[c]) for c in space.classes),
        fine_of=tuple(fine.index(c) if c in fine else -1 for c in space.classes),
    )


def combine_cascade(p_coarse: npt.ArrayLike, p_fine: npt.ArrayLike, cmap: CascadeMap) -> npt.NDArray[np.float64]:
    """Class probabilities in the label space by the product rule (numpy reference of ``CascadeHead``).

    Args:
        p_coarse: (N, len(cmap.coarse)) coarse probabilities.
        p_fine: (N, len(cmap.fine)) fine probabilities given Negative.

    Returns:
        (N, C) float64 with ``P(c) = p_coarse[coarse_of[c]] · (p_fine[fine_of[c]] if c is fine else 1)``.
    """
    pc = np.asarray(p_coarse, dtype=np.float64)
    pf = np.asarray(p_fine, dtype=np.float64)
    out = pc[:, list(cmap.coarse_of)]
    fine_cols = [j for j, f in enumerate(cmap.fine_of) if f >= 0]
    out[:, fine_cols] *= pf[:, [cmap.fine_of[j] for j in fine_cols]]
    return out


class CascadeHead(nn.Module):
    """Coarse and fine linear heads; ``logits`` = log of the product-rule probabilities (softmax gives them back).

    Outputs ``{"logits": (B, C), "coarse": (B, Kc), "fine": (B, Kf)}`` (raw head logits for the losses).
    """

    coarse_idx: torch.Tensor
    fine_idx: torch.Tensor
    is_fine: torch.Tensor

    def __init__(self, feature_dim: int, space: LabelSpace) -> None:
        super().__init__()
        self.cmap = cascade_map(space)
        self.coarse = nn.Linear(feature_dim, len(self.cmap.coarse))
        self.fine = nn.Linear(feature_dim, len(self.cmap.fine))
        fine_of = torch.tensor(self.cmap.fine_of, dtype=torch.long)
        self.register_buffer("coarse_idx", torch.tensor(self.cmap.coarse_of, dtype=torch.long), persistent=False)
        self.register_buffer("fine_idx", fine_of.clamp(min=0), persistent=False)
        self.register_buffer("is_fine", fine_of >= 0, persistent=False)

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        coarse, fine = self.coarse(feat), self.fine(feat)
        log_c = torch.log_softmax(coarse.float(), dim=-1)
        log_f = torch.log_softmax(fine.float(), dim=-1)
        logp = log_c[:, self.coarse_idx] + torch.where(
            self.is_fine, log_f[:, self.fine_idx], torch.zeros_like(log_c[:, self.coarse_idx])
        )
        return {"logits": logp, "coarse": coarse, "fine": fine}

    def targets(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse targets (B,) and fine targets (B,) (-1 for rows of a coarse class) of labels ``y`` in the space."""
        return self.coarse_idx[y], torch.where(self.is_fine[y], self.fine_idx[y], torch.full_like(y, -1))
