"""Self-supervised pretraining of a backbone on unlabelled faces (SimSiam, BYOL) on Ray Train, resumable per epoch.

Each step draws a batch of the decoded faces (held in the object store once, like the student's in-memory set,
engine.train.memory), makes two views of every face (engine.data.transforms.build_view_augment), and pulls the
prediction of one view towards the projection of the other, which is held fixed (negative cosine; Chen & He 2021).
``simsiam`` takes that projection from the same network under a stop-gradient; ``byol`` from an EMA copy of the
backbone and projector (Grill et al. 2020). No label is read. Every epoch is checkpointed (network, target,
optimiser, schedule, history) and a run resumes after its last finished epoch, with the same weights as a run that
never stopped: the epoch order and the views are seeded per (epoch, worker).

The result is the backbone's state dict, which :func:`load_backbone` puts into a classifier made by
``engine.models.factory.create_model`` (the round-0 student: engine/stages/pretrain.py).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from torch import nn

from engine.config import ModelConfig, PretrainConfig, TrainConfig, build, to_dict
from engine.errors import ConfigError, EngineError
from engine.train.loop import derive_seed, worker_threads

if TYPE_CHECKING:
    import ray.data
    import torch

logger = logging.getLogger(__name__)

BACKBONE = "backbone."
"""Prefix of the backbone's tensors in the pretraining network's state dict."""


def optimiser_config(cfg: PretrainConfig) -> TrainConfig:
    """The pretraining's optimiser, schedule and Ray Train settings as a ``TrainConfig`` (engine.train.optim and
    engine.train.trainer.run_trainer read them): SGD Nesterov, linear warm-up then cosine to 0."""
    return TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer="sgd",
        weight_decay=cfg.weight_decay,
        schedule="warmup_cosine",
        warmup_epochs=cfg.warmup_epochs,
        num_workers=cfg.num_workers,
        in_process=cfg.in_process,
        max_failures=cfg.max_failures,
        seed=cfg.seed,
    )


class SSLNet(nn.Module):
    """The pretraining network: the student's backbone, a projector ``D -> proj -> proj`` (BN, ReLU) and a bottleneck
    predictor ``proj -> pred -> proj`` (SimSiam's shapes)."""

    def __init__(self, backbone: nn.Module, dim: int, proj_dim: int, pred_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim),
            nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, proj_dim),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Projections and predictions of two views: ``(z1, z2, p1, p2)``. Both views go through one call, so that
        DistributedDataParallel (which must see the forward) syncs the gradients of both."""
        z1, z2 = project(self, x1), project(self, x2)
        return z1, z2, self.predictor(z1), self.predictor(z2)


def build_ssl_net(model_cfg: ModelConfig, cfg: PretrainConfig) -> SSLNet:
    """The pretraining network of ``model_cfg``'s backbone (built without dropout: it has no weights, and it would
    only add noise to the views)."""
    from engine.models.factory import create_backbone

    backbone, dim = create_backbone(replace(model_cfg, drop_rate=0.0))
    return SSLNet(backbone, dim, cfg.proj_dim, cfg.pred_dim)


def project(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The projection z of a batch of views (backbone, then projector) of an :class:`SSLNet` or its BYOL target."""
    projector, backbone = net.get_submodule("projector"), net.get_submodule("backbone")
    z: torch.Tensor = projector(backbone(x))
    return z


def ssl_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """The symmetric negative cosine ``-(cos(p1, t2) + cos(p2, t1)) / 2`` of the predictions ``p`` of each view and
    the targets ``t`` of the other, held fixed (detached): -1 when every prediction points at its target."""
    import torch.nn.functional as F

    return -0.5 * (
        F.cosine_similarity(p1, t2.detach(), dim=-1).mean() + F.cosine_similarity(p2, t1.detach(), dim=-1).mean()
    )


def target_decay(base: float, step: int, total_steps: int) -> float:
    """BYOL's target EMA decay at ``step``: ``1 - (1 - base) (cos(pi k / K) + 1) / 2``, from ``base`` to 1."""
    k = min(step, total_steps)
    return 1 - (1 - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1) / 2


def load_backbone(model: nn.Module, backbone: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy a pretrained backbone's tensors into ``model`` (a classifier from ``create_model`` of the same model
    config); returns the names left as they were (the classifier's).

    Raises:
        ConfigError: a backbone tensor has no place in ``model`` or another shape (another architecture).
    """
    from engine.models.heads import MultiHeadNet
    from engine.train.loop import state_dict_mismatch

    target = model.backbone if isinstance(model, MultiHeadNet) else model
    own = target.state_dict()
    extra = sorted(set(backbone) - set(own))
    shapes = state_dict_mismatch(backbone, {k: v for k, v in own.items() if k in backbone})
    if extra or shapes:
        raise ConfigError(
            f"the pretrained backbone does not fit this net ({len(extra)} tensors without a place, e.g. {extra[:1]}; "
            f"{shapes or 'shapes match'}); pretrain with the campaign's model section"
        )
    unexpected = target.load_state_dict(dict(backbone), strict=False).unexpected_keys
    assert not unexpected
    prefix = "backbone." if target is not model else ""
    return sorted(set(model.state_dict()) - {prefix + k for k in backbone})


# ---------------------------------------------------------------- the worker


@dataclass(frozen=True)
class PretrainSpec:
    """The worker's typed view of :func:`make_pretrain_config`'s dict."""

    pretrain: PretrainConfig
    model: ModelConfig
    memory: Any
    """Ray ObjectRef of the decoded faces (``MemorySet.columns``: ``pixels`` uint8 (N, C, S, S))."""
    steps_per_epoch: int
    batch_size: int
    """Faces per step of each worker (``pretrain.batch_size``, or fewer when a worker's share is smaller)."""
    call_id: str
    local_checkpoint: str | None = None
    fault_after_epoch: int | None = None


def make_pretrain_config(spec: PretrainSpec) -> dict[str, Any]:
    """The plain ``train_loop_config`` for :func:`pretrain_loop_per_worker`."""
    return {
        "pretrain": to_dict(spec.pretrain),
        "model": to_dict(spec.model),
        "memory": spec.memory,
        "steps_per_epoch": spec.steps_per_epoch,
        "batch_size": spec.batch_size,
        "call_id": spec.call_id,
        "local_checkpoint": spec.local_checkpoint,
        "fault_after_epoch": spec.fault_after_epoch,
    }


def parse_pretrain_config(config: Mapping[str, Any]) -> PretrainSpec:
    """Inverse of :func:`make_pretrain_config`."""
    where = "pretrain_loop_config"
    return PretrainSpec(
        pretrain=build(PretrainConfig, config["pretrain"], where=where, prefix="campaign.pretrain."),
        model=build(ModelConfig, config["model"], where=where, prefix="model."),
        memory=config["memory"],
        steps_per_epoch=int(config["steps_per_epoch"]),
        batch_size=int(config["batch_size"]),
        call_id=str(config["call_id"]),
        local_checkpoint=config.get("local_checkpoint"),
        fault_after_epoch=config.get("fault_after_epoch"),
    )


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    """Pretrain on this worker's share of the faces; report the epoch's metrics and (rank 0) a checkpoint after
    every epoch. Resumes from the run's latest checkpoint when it has one."""
    import ray.train
    import ray.train.torch
    import torch

    from engine.data.transforms import build_view_augment
    from engine.models.checkpoint import unwrap_model
    from engine.train.batch import normalize_uint8
    from engine.train.fit import Fit, fit_epoch
    from engine.train.loop import _memory_shard, _sum_over_workers, report_epoch, restored_state
    from engine.train.optim import build_optimizer, build_scheduler
    from engine.train.state import TrainState
    from engine.train.step import StepStats

    spec = parse_pretrain_config(config)
    p = spec.pretrain
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = worker_threads(context.get_local_world_size())
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    torch.manual_seed(derive_seed(p.seed, 0, 0, 0))  # identical initial weights on every rank
    net = build_ssl_net(spec.model, p)
    target = copy.deepcopy(net) if p.method == "byol" else None
    if target is not None:
        del target.predictor
        target.requires_grad_(False)
    restored = restored_state(spec.local_checkpoint)
    if restored is not None:
        net.load_state_dict(restored.model)
        if target is not None:
            assert restored.ema is not None, "a byol checkpoint holds its target network"
            target.load_state_dict(restored.ema["module"])
    if target is not None:
        target.to(device)
    net = ray.train.torch.prepare_model(net)
    ocfg = optimiser_config(p)
    optimizer = build_optimizer(net, ocfg)
    scheduler = build_scheduler(optimizer, ocfg, steps_per_epoch=spec.steps_per_epoch)
    history: list[dict[str, Any]] = []
    start = 0
    if restored is not None:
        optimizer.load_state_dict(restored.optimizer)
        scheduler.load_state_dict(restored.scheduler)
        history, start = list(restored.history), restored.epoch + 1
        logger.info("pretraining resumed at epoch %d of %d", start, p.epochs)
    if start >= p.epochs:
        return
    mem = _memory_shard(spec.memory, rank, world)
    view = build_view_augment(crop_min_scale=p.crop_min_scale, jitter=p.jitter)
    fit = Fit(model=net, optimizer=optimizer, scheduler=scheduler, total_steps=p.epochs * spec.steps_per_epoch)
    bs = spec.batch_size

    def step(pixels: npt.NDArray[np.uint8]) -> StepStats:
        u8 = torch.from_numpy(pixels).to(device)
        v1, v2 = (normalize_uint8(view(u8), spec.model) for _ in range(2))
        z1, z2, p1, p2 = net(v1, v2)
        if target is not None:
            with torch.no_grad():
                t1, t2 = project(target, v1), project(target, v2)
        else:
            t1, t2 = z1, z2
        loss = ssl_loss(p1, p2, t1, t2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if target is not None:
            decay = target_decay(p.target_decay, int(scheduler.last_epoch), fit.total_steps or 1)
            with torch.no_grad():
                bare = unwrap_model(net)
                online = dict(bare.named_parameters())
                for name, t in target.named_parameters():
                    t.mul_(decay).add_(online[name].detach(), alpha=1 - decay)
                buffers = dict(bare.named_buffers())
                for name, b in target.named_buffers():
                    b.copy_(buffers[name])
        # SimSiam's collapse monitor: the std of the l2-normalised projection per dimension, times sqrt(dim)
        # (about 1 for spread outputs, 0 when every face maps to one point)
        with torch.no_grad():
            zn = torch.nn.functional.normalize(z1.detach().float(), dim=1)
            spread = float(zn.std(dim=0).mean()) * math.sqrt(zn.shape[1])
        return StepStats(float(loss.detach()), spread, 0.0, len(pixels), 0, 0.0)

    for epoch in range(start, p.epochs):
        torch.manual_seed(derive_seed(p.seed, epoch, rank, 1))  # the views: the same on a resumed run
        rng = np.random.default_rng(derive_seed(p.seed, epoch, rank, 2))
        order = rng.permutation(mem.rows)[: spec.steps_per_epoch * bs]
        net.train()
        totals = fit_epoch(fit, (mem.pixels[order[i : i + bs]] for i in range(0, len(order), bs)), step)
        sums = _sum_over_workers(totals.sums, device)
        steps, rows = int(sums[3]), int(sums[4])
        record = {
            "epoch": epoch,
            "call_id": spec.call_id,
            "ssl_loss": sums[0] / max(steps, 1),
            "spread": sums[1] / max(steps, 1),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "steps": steps,
            "images": rows,
            "seconds": totals.seconds,
            "images_per_s": rows / totals.seconds if totals.seconds > 0 else 0.0,
            "threads": threads,
        }
        history.append(record)
        state = None
        if rank == 0:
            state = TrainState(
                model={k: v.detach().to("cpu") for k, v in unwrap_model(net).state_dict().items()},
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                epoch=epoch,
                global_step=int(scheduler.last_epoch),
                history=history,
                ema=None if target is None else {"module": target.state_dict()},
            )
        report_epoch(record, state, spec.local_checkpoint)
        logger.info(
            "pretraining epoch %d: loss %.4f, spread %.3f, %.0f faces/s",
            epoch,
            record["ssl_loss"],
            record["spread"],
            record["images_per_s"],
        )
        if spec.fault_after_epoch is not None and epoch == spec.fault_after_epoch:
            raise RuntimeError(f"injected test fault after epoch {epoch} (fault_after_epoch)")


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run gives: the backbone's weights and the run's record."""

    backbone: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    epochs_run: int
    """Epochs this call trained (fewer than ``epochs`` when it resumed a run)."""
    resumed_from_epoch: int
    seconds: float
    images: int


def pretrain_backbone(
    images: ray.data.Dataset,
    *,
    cfg: PretrainConfig,
    model_cfg: ModelConfig,
    storage_path: str,
    run_name: str,
    fault_after_epoch: int | None = None,
) -> PretrainResult:
    """Pretrain ``model_cfg``'s backbone with ``cfg.method`` on the faces of ``images`` (an ``image`` column of
    encoded bytes), as the Ray Train run ``storage_path/run_name`` (a run of that name resumes after its last
    finished epoch).

    Args:
        fault_after_epoch: test-only: raise in the worker after that epoch's checkpoint.

    Raises:
        ConfigError: ``cfg.method`` is unset, or fewer than two faces per worker.
        EngineError: the run failed (the message names the run to resume).
    """
    import os

    from engine.train.state import read_train_state
    from engine.train.trainer import _local_checkpoint, put_decoded, run_trainer

    if cfg.method is None:
        raise ConfigError("campaign.pretrain.method is null: nothing to pretrain (simsiam or byol)")
    t0 = time.monotonic()
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    import ray

    memory = put_decoded(images.select_columns(["image"]), model_cfg, "pretraining")  # one pass over the faces
    rows = len(ray.get(memory)["pixels"])  # zero-copy view of the stored array
    share = rows // cfg.num_workers
    if share < 2:
        raise ConfigError(
            f"{rows} faces cannot feed campaign.pretrain.num_workers={cfg.num_workers} workers two faces each; add "
            "faces or use fewer workers"
        )
    batch = min(cfg.batch_size, share)
    ocfg = optimiser_config(cfg)
    spec = PretrainSpec(
        pretrain=cfg,
        model=model_cfg,
        memory=memory,
        steps_per_epoch=share // batch,  # the same on every worker (DDP steps together); the rest waits an epoch
        batch_size=batch,
        call_id=uuid.uuid4().hex,
        local_checkpoint=_local_checkpoint(ocfg, storage_path, run_name),
        fault_after_epoch=fault_after_epoch,
    )
    logger.info(
        "pretraining %s (%s) on %d faces: %d epochs of %d steps of %d",
        model_cfg.name,
        cfg.method,
        rows,
        cfg.epochs,
        spec.steps_per_epoch,
        batch,
    )
    result = run_trainer(
        pretrain_loop_per_worker,
        make_pretrain_config(spec),
        ocfg,
        datasets={},
        storage_path=storage_path,
        run_name=run_name,
        what="pretraining",
    )
    if result.checkpoint is None:
        raise EngineError(f"pretraining run {result.path} finished without a checkpoint; start it again")
    with result.checkpoint.as_directory() as directory:
        state = read_train_state(directory)
    mine = [r["epoch"] for r in state.history if r.get("call_id") == spec.call_id]
    return PretrainResult(
        backbone={k[len(BACKBONE) :]: v for k, v in state.model.items() if k.startswith(BACKBONE)},
        history=state.history,
        epochs_run=len(mine),
        resumed_from_epoch=int(min(mine)) if mine else cfg.epochs,
        seconds=time.monotonic() - t0,
        images=rows,
    )


def backbone_features(
    model: nn.Module, pixels: npt.NDArray[np.uint8], model_cfg: ModelConfig, batch_size: int = 512
) -> npt.NDArray[np.float32]:
    """(N, D) features of ``model``'s backbone (eval mode, no gradient) for uint8 (N, C, S, S) faces."""
    import torch

    from engine.train.batch import normalize_uint8

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            x = normalize_uint8(torch.from_numpy(pixels[i : i + batch_size]), model_cfg)
            out.append(model(x).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def linear_probe(
    train_x: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64],
    val_x: npt.NDArray[np.float32],
    val_y: npt.NDArray[np.int64],
    classes: list[str],
) -> dict[str, float]:
    """Val macro-F1 and accuracy of a logistic regression on standardised frozen features (the linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from engine.metrics import classification_metrics

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
    m = classification_metrics(val_y, clf.predict(scaler.transform(val_x)), classes)
    return {"macro_f1": float(m["macro_f1"]), "accuracy": float(m["accuracy"])}
