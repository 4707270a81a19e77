"""The supervised loss composed from a model's named outputs and the batch: plain CE, cascade, ESR, VA (CCC).

For a supervised batch of B rows with labels ``y``, loss weights ``w`` (1 for labelled rows, ``lambda_u · weight``
for pseudo rows) and optional valence/arousal targets:

- plain (``logits`` only): ``L = (1/B) Σ_b w_b · CE(logits_b, y_b)``.
- cascade (``coarse``, ``fine``): ``L = (1/B) Σ_b w_b · CE(coarse_b, coarse(y_b))
  + fine_weight · Σ_{b ∈ Neg} w_b · CE(fine_b, fine(y_b)) / |Neg|`` where Neg are the rows of a Negative class.
- ESR (``branches``, ``branch_features``): the mean over the M branches of the plain CE of each branch
  ``+ diversity_weight · D`` with ``D = mean_{b, i≠j} exp(−γ · ||f̂_bi − f̂_bj||²)`` on L2-normalised branch
  features f̂ (the "direct" RBF similarity of Diversified ESR; it is 1 for identical branches and falls as they
  spread).
- VA head (``va``): ``+ va_weight · (1 − (CCC_valence + CCC_arousal) / 2)`` over the rows whose targets are finite
  (at least 2 of them; else the term is 0).

A term without rows (no Negative row, no VA target) is ``0 · sum(output)``, a zero whose graph still reaches the head,
so DistributedDataParallel finds a gradient for every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig, TrainConfig
    from engine.labels import LabelSpace

Outputs = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the composed loss terms (from TrainConfig)."""

    fine: float = 1.0
    diversity: float = 0.0
    diversity_gamma: float = 1.0
    va: float = 1.0
    smoothing: float = 0.0
    """Label smoothing ε of the class cross-entropies (plain and ESR heads)."""

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> LossWeights:
        """The weights of ``train.fine_weight``, ``diversity_weight``, ``diversity_gamma``, ``va_weight`` and
        ``label_smoothing``."""
        return cls(cfg.fine_weight, cfg.diversity_weight, cfg.diversity_gamma, cfg.va_weight, cfg.label_smoothing)


class SupervisedLoss:
    """Callable ``(outputs, y, w, va_target) -> (loss, terms)`` for one model config and label space."""

    def __init__(self, model_cfg: ModelConfig, space: LabelSpace, weights: LossWeights) -> None:
        """Precompute the cascade's label maps when ``model_cfg.head == "cascade"``."""
        import torch

        self.weights = weights
        self.coarse_of: torch.Tensor | None = None
        self.fine_of: torch.Tensor | None = None
        if model_cfg.head == "cascade":
            from engine.models.cascade import cascade_map

            cmap = cascade_map(space)
            self.coarse_of = torch.tensor(cmap.coarse_of, dtype=torch.long)
            self.fine_of = torch.tensor(cmap.fine_of, dtype=torch.long)

    def __call__(
        self,
        out: Outputs,
        y: torch.Tensor,
        w: torch.Tensor,
        va_target: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of B rows and its terms (floats, for logging).

        Args:
            out: the model's outputs for these B rows (``as_outputs`` form, float32).
            y: (B,) int64 labels; w: (B,) float32 loss weights.
            va_target: (B, 2) float32 valence/arousal targets, NaN where unknown; None when the batch has none.
            target: (B, C) soft targets (:func:`engine.train.batch.soft_targets`, label smoothing included) for the
                linear head's cross-entropy; None: the hard labels ``y``.
        """
        terms: dict[str, torch.Tensor] = {}
        if target is not None and ("coarse" in out or "branches" in out):
            raise ConfigError("soft labels (train.soft_labels) need model.head=linear")
        if "coarse" in out and self.coarse_of is not None and self.fine_of is not None:
            terms["coarse"], terms["fine"] = cascade_losses(out, y, w, self.coarse_of, self.fine_of)
            loss = terms["coarse"] + self.weights.fine * terms["fine"]
        elif "branches" in out:
            terms["branches"] = branch_ce(out["branches"], y, w, self.weights.smoothing)
            loss = terms["branches"]
            if self.weights.diversity > 0 and "branch_features" in out:
                terms["diversity"] = diversity_loss(out["branch_features"], self.weights.diversity_gamma)
                loss = loss + self.weights.diversity * terms["diversity"]
        elif target is not None:
            loss = soft_ce(out["logits"], target, w)
        else:
            loss = weighted_ce(out["logits"], y, w, self.weights.smoothing)
        if "va" in out:  # without targets the term is a zero that still reaches the VA head (DDP needs every grad)
            terms["va"] = va_loss(out["va"], va_target) if va_target is not None else 0 * out["va"].sum()
            loss = loss + self.weights.va * terms["va"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}


def soft_ce(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(1/B) Σ_b w_b · (−Σ_c t_bc · log softmax(logits_b)_c)``: the cross-entropy against soft targets (rows of
    ``target`` sum to 1); with one-hot rows it is :func:`weighted_ce`."""
    import torch.nn.functional as F

    return (w * -(target * F.log_softmax(logits, dim=1)).sum(dim=1)).mean()


def distill_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term ``T² · (1/U) Σ_u KL(t_u ‖ softmax(logits_u / T))``, with ``t`` the teacher's
    probabilities already at temperature T (rows summing to 1; zeros contribute nothing). The T² keeps its gradients'
    scale independent of T."""
    import torch
    import torch.nn.functional as F

    log_q = F.log_softmax(logits / temperature, dim=1)
    log_t = torch.log(target.clamp_min(1e-30))
    kl = torch.where(target > 0, target * (log_t - log_q), torch.zeros_like(target)).sum(dim=1)
    return temperature**2 * kl.mean()


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """``(1/B) Σ w_b · CE(logits_b, y_b)``; with label smoothing ε the target is ``(1-ε)·onehot(y_b) + ε/C``."""
    import torch.nn.functional as F

    return (w * F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)).mean()


def cascade_losses(
    out: Outputs, y: torch.Tensor, w: torch.Tensor, coarse_of: torch.Tensor, fine_of: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(coarse CE over all rows, fine CE over the Negative-class rows; 0 when the batch has none)."""
    import torch.nn.functional as F

    coarse_of, fine_of = coarse_of.to(y.device), fine_of.to(y.device)
    coarse = weighted_ce(out["coarse"], coarse_of[y], w)
    fy = fine_of[y]
    neg = fy >= 0
    if not bool(neg.any()):  # a zero that still reaches the fine head (DDP needs every grad)
        return coarse, 0 * out["fine"].sum()
    fine = (w[neg] * F.cross_entropy(out["fine"][neg], fy[neg], reduction="none")).sum() / neg.sum()
    return coarse, fine


def branch_ce(branches: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the M branches of each branch's weighted CE (label smoothing ε); ``branches`` is (B, M, C)."""
    import torch.nn.functional as F

    b, m, c = branches.shape
    ce = F.cross_entropy(
        branches.reshape(b * m, c), y.repeat_interleave(m), reduction="none", label_smoothing=smoothing
    ).reshape(b, m)
    return (w[:, None] * ce).mean()


def diversity_loss(features: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean RBF similarity ``exp(−γ ||f̂_i − f̂_j||²)`` over sample rows and branch pairs i ≠ j; (B, M, H) input."""
    import torch
    import torch.nn.functional as F

    f = F.normalize(features.float(), dim=-1)
    d2 = torch.cdist(f, f).square()
    m = f.shape[1]
    off = ~torch.eye(m, dtype=torch.bool, device=f.device)
    return torch.exp(-gamma * d2)[:, off].mean()


def ccc_torch(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient of two (N,) series (population moments); 1 for identical series."""
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (vx + vy + (mx - my) ** 2 + eps)


def va_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 − (CCC_valence + CCC_arousal) / 2`` over rows whose two targets are finite (0 with fewer than 2)."""
    import torch

    keep = torch.isfinite(target).all(dim=1)
    if int(keep.sum()) < 2:
        return 0 * pred.sum()
    p, t = pred[keep].float(), target[keep].float()
    return 1 - (ccc_torch(p[:, 0], t[:, 0]) + ccc_torch(p[:, 1], t[:, 1])) / 2


def slice_outputs(out: Outputs, start: int, stop: int) -> Outputs:
    """Rows ``start:stop`` of every output (all outputs are batch-first)."""
    return {k: v[start:stop] for k, v in out.items()}


def fairness_loss(
    mask: torch.Tensor, probs_strong: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor
) -> torch.Tensor:
    """FreeMatch self-adaptive fairness term L_f in torch: engine.thresholds.fairness_loss (the numpy reference)
    with the gradient flowing only through the mean strong-view probability of the masked rows.

    Args:
        mask: (U,) the online policy's weights (rows with weight > 0 are the masked rows).
        probs_strong: (U, C) softmax of the strong-view logits.
        p_model, label_hist: (C,) the policy's EMA class probability and label histogram.

    Returns:
        A scalar; ``0 · sum(probs_strong)`` when no row is masked.
    """
    import torch

    keep = mask > 0
    if not bool(keep.any()):
        return 0 * probs_strong.sum()
    q = probs_strong[keep]
    hist = torch.bincount(q.detach().argmax(dim=1), minlength=q.shape[1]).to(q.dtype) / q.shape[0]

    def inv(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, 1.0 / x.clamp_min(1e-30), torch.zeros_like(x))

    a = p_model.to(q) * inv(label_hist.to(q))
    a = a / a.sum()
    b = q.mean(dim=0) * inv(hist)
    b = b / b.sum()
    return (a * torch.log(b + 1e-12)).sum()
