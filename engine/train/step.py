"""One optimiser step of the student: supervised loss on labelled ∪ pseudo rows plus the online unlabelled loss.

Losses (reference thresholds.md section 1), for a supervised batch of B rows and an unlabelled batch of U = mu * B:

- ``L_s = (1/B) * sum_b w_b * CE(f(aug_b(x_b)), y_b)``: ``w_b`` is 1 for labelled rows and ``lambda_u * weight_b``
  for offline pseudo-labelled rows; ``aug_b`` is weak for labelled rows and strong for pseudo rows.
- ``L_u = (1/U) * sum_u m_u * CE(f(A(u)), argmax q_u)`` with ``q_u = softmax(f(alpha(u)))`` (no gradient) and
  ``m_u`` the online policy's weight; the normaliser is the whole unlabelled batch, accepted or not.
- ``L = L_s + lambda_u * L_u`` (``+ w_f * L_f``, FreeMatch's self-adaptive fairness term, when the online policy
  is FreeMatch with ``threshold.fairness_weight`` > 0; engine.train.losses.fairness_loss).
- Distillation instead of the online branch (``train.distill``): the U pool rows carry the teacher's probabilities
  at temperature T, ``L_d = T² * (1/U) * sum_u KL(p_T,u ‖ softmax(f(A(u)) / T))`` and ``L = L_s + w_d * L_d``
  (reported as ``loss_u``, every row counted in ``mask_rate``).

With ``StepContext.loss`` set, ``L_s`` is composed from the model's named outputs by engine.train.losses (cascade,
ESR branches and diversity, VA CCC); its plain-logits case is the ``L_s`` above. ``L_u`` always uses ``logits``.

Labelled, weak and strong views go through the network in one concatenated forward (FixMatch / USB), so batch norm
sees all three.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engine.train.batch import (
    Augmenters,
    NumpyBatch,
    distill_views,
    soft_targets,
    supervised_input,
    unlabelled_views,
)

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig
    from engine.thresholds import ThresholdPolicy
    from engine.train.losses import SupervisedLoss


@dataclass
class StepContext:
    """What every step needs besides the model, the optimiser and the data."""

    model_cfg: ModelConfig
    aug: Augmenters
    device: torch.device
    num_classes: int
    lambda_u: float
    amp_dtype: torch.dtype | None
    """Autocast dtype on GPU (bf16 or fp16), None for full precision."""
    policy: ThresholdPolicy | None = None
    """Online threshold policy (None: no unlabelled branch)."""
    loss: SupervisedLoss | None = None
    """Composes the supervised loss from the model's named outputs (engine.train.losses); None = plain weighted CE."""
    distill_temperature: float | None = None
    """Distillation (``train.distill``): the unlabelled batch is pool rows with the teacher's probabilities at this
    temperature (``target``), learnt by their strong view with engine.train.losses.distill_loss; None = the online
    branch (or no unlabelled batch)."""
    distill_weight: float = 1.0


@dataclass
class StepStats:
    """Sums over one step; epoch statistics are sums of these (and across workers)."""

    loss: float
    loss_s: float
    loss_u: float
    rows: int
    unlabelled_rows: int
    weight_sum: float
    """Sum of the unlabelled weights m_u (the accepted count for hard masks)."""
    soft_rows: int = 0
    """Supervised rows trained on a soft label (``target``)."""


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    sup: NumpyBatch,
    unl: NumpyBatch | None,
    ctx: StepContext,
) -> StepStats:
    """Forward, backward and one optimiser step (the caller steps the LR scheduler).

    Args:
        sup: supervised numpy batch (``image``, ``label``, ``weight``, ``strong``).
        unl: unlabelled numpy batch (``image``, ``idx``) of U rows, or None without the online branch.
        scaler: a ``torch.amp.GradScaler`` (disabled unless fp16).
    """
    import torch
    import torch.nn.functional as F

    from engine.models.heads import as_outputs
    from engine.train.losses import slice_outputs, soft_ce, weighted_ce

    x, y, w = supervised_input(sup, ctx.model_cfg, ctx.aug, num_classes=ctx.num_classes)
    soft = soft_targets(sup, y, ctx.num_classes, ctx.loss.weights.smoothing if ctx.loss is not None else 0.0)
    target = None if soft is None else soft[0].to(ctx.device)
    parts = [x]
    idx: npt.NDArray[np.int64] | None = None
    distilled: torch.Tensor | None = None
    if unl is not None and ctx.distill_temperature is not None:
        d_strong, distilled = distill_views(unl, ctx.model_cfg, ctx.aug, ctx.num_classes)
        parts.append(d_strong)
    elif unl is not None:
        u_weak, u_strong, idx = unlabelled_views(unl, ctx.model_cfg, ctx.aug)
        parts += [u_weak, u_strong]
    # channels_last (``.to``; ``.contiguous`` keeps NCHW strides when C = 1): oneDNN / cuDNN pick faster convolution
    # kernels for NHWC (1.25-1.35x for small_cnn and vgg_fer on 2 CPU cores); the model follows its input's format.
    inputs = torch.cat(parts).to(ctx.device, non_blocking=True).to(memory_format=torch.channels_last)
    y, w = y.to(ctx.device), w.to(ctx.device)
    autocast = (
        torch.autocast(device_type=ctx.device.type, dtype=ctx.amp_dtype)
        if ctx.amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        out = {k: v.float() for k, v in as_outputs(model(inputs)).items()}
    logits = out["logits"]
    n = x.shape[0]
    if ctx.loss is None:
        loss_s = weighted_ce(logits[:n], y, w) if target is None else soft_ce(logits[:n], target, w)
    else:
        loss_s, _ = ctx.loss(slice_outputs(out, 0, n), y, w, va_targets(sup, ctx.device), target)
    loss_u = torch.zeros((), device=ctx.device)
    loss_f = torch.zeros((), device=ctx.device)
    weight_sum = 0.0
    u = 0
    if distilled is not None:
        from engine.train.losses import distill_loss

        assert ctx.distill_temperature is not None
        u = distilled.shape[0]
        loss_u = distill_loss(logits[n : n + u], distilled.to(ctx.device), ctx.distill_temperature)
        weight_sum = float(u)
    elif unl is not None:
        assert ctx.policy is not None and idx is not None
        u = idx.shape[0]
        logits_weak, logits_strong = logits[n : n + u], logits[n + u :]
        q = torch.softmax(logits_weak.detach(), dim=1)
        m = online_weights(ctx.policy, q, idx)
        loss_u = (m * F.cross_entropy(logits_strong, q.argmax(dim=1), reduction="none")).sum() / u
        weight_sum = float(m.sum())
        from engine.thresholds import FreeMatchPolicy

        if isinstance(ctx.policy, FreeMatchPolicy) and ctx.policy.use_fairness:  # FreeMatch SAF: + w_f * L_f
            from engine.train.losses import fairness_loss

            loss_f = ctx.policy.fairness_weight * fairness_loss(
                m,
                torch.softmax(logits_strong, dim=1),
                torch.as_tensor(ctx.policy.p_model, device=ctx.device),
                torch.as_tensor(ctx.policy.label_hist, device=ctx.device),
            )
    loss = loss_s + (ctx.distill_weight if distilled is not None else ctx.lambda_u) * loss_u + loss_f
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return StepStats(
        loss=float(loss.detach()),
        loss_s=float(loss_s.detach()),
        loss_u=float(loss_u.detach()),
        rows=n,
        unlabelled_rows=u,
        weight_sum=weight_sum,
        soft_rows=0 if soft is None else soft[1],
    )


def online_weights(policy: ThresholdPolicy, q: torch.Tensor, idx: npt.NDArray[np.int64]) -> torch.Tensor:
    """Per-row weights m_u of this worker's unlabelled batch from the online policy (updates its state).

    ``policy.step`` applies the method's own order (DTM-R / FlexMatch mask with the previous state, then update;
    FreeMatch / SoftMatch update first). With several workers the (U, C) probabilities and indices of every worker
    are all-gathered first, so each worker's policy sees the same global batch and every copy of the state stays
    identical; each worker keeps the weights of its own rows.

    Returns:
        float32 (U,) tensor on q's device.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world, rank = dist.get_world_size(), dist.get_rank()
        idx_t = torch.as_tensor(idx, device=q.device)
        qs = [torch.empty_like(q) for _ in range(world)]
        ids = [torch.empty_like(idx_t) for _ in range(world)]
        dist.all_gather(qs, q.contiguous())
        dist.all_gather(ids, idx_t)
        all_w = policy.step(torch.cat(qs).float().cpu().numpy(), torch.cat(ids).cpu().numpy())
        u = q.shape[0]
        w = all_w[rank * u : (rank + 1) * u]
    else:
        w = policy.step(q.float().cpu().numpy(), idx)
    return torch.as_tensor(np.asarray(w, dtype=np.float32), device=q.device)


def va_targets(sup: NumpyBatch, device: torch.device) -> torch.Tensor | None:
    """(B, 2) float32 valence/arousal targets of a supervised batch (NaN where unknown), None without VA columns."""
    import torch

    if "valence" not in sup or "arousal" not in sup:
        return None
    va = np.stack([np.asarray(sup["valence"], np.float32), np.asarray(sup["arousal"], np.float32)], axis=1)
    return torch.from_numpy(va).to(device)
