"""The Ray Train per-worker loop: build the student, resume or warm-start it, train epochs, checkpoint and report.

``train_loop_per_worker`` receives only the plain dict of :func:`make_loop_config` (no closures over datasets or
models) and reads its data with ``ray.train.get_dataset_shard("train" / "unlabelled")``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.config import ModelConfig, TrainConfig, build, to_dict
from engine.errors import ConfigError, EngineError
from engine.labels import LabelSpace
from engine.train.batch import Augmenters, NumpyBatch, cycle_batches
from engine.train.ema import WeightEMA
from engine.train.fit import Fit, fit_epoch
from engine.train.losses import LossWeights, SupervisedLoss
from engine.train.memory import MemorySet, epoch_order, memory_batches, to_images
from engine.train.optim import autocast_dtype, build_optimizer, build_scheduler
from engine.train.state import (
    TrainState,
    latest_local_state,
    read_train_state,
    save_local_state,
    write_train_state,
)
from engine.train.step import StepContext, StepStats, train_step

if TYPE_CHECKING:
    import torch

    from engine.thresholds import ThresholdPolicy

logger = logging.getLogger(__name__)

SUPERVISED = "train"
"""Ray Train dataset name of the supervised stream (labelled ∪ pseudo)."""
UNLABELLED = "unlabelled"
"""Ray Train dataset name of the online branch's unlabelled stream."""


@dataclass(frozen=True)
class LoopSpec:
    """The worker's typed view of :func:`make_loop_config`'s dict."""

    train: TrainConfig
    model: ModelConfig
    label_space: LabelSpace
    steps_per_epoch: int
    call_id: str
    init_checkpoint: str | None = None
    num_unlabelled: int = 0
    policy_params: Mapping[str, Any] | None = None
    mlflow: Mapping[str, str] | None = None
    fault_after_epoch: int | None = None
    memory: Any = None
    """Ray ObjectRef of the supervised set decoded by the driver (``MemorySet.columns``): every epoch draws from it
    (engine.train.memory); None = stream the ``train`` dataset from Ray Data, decoding per batch."""
    repeat_factors: tuple[float, ...] | None = None
    """Class-balanced repeat factors of the labelled rows, applied in the worker on the in-memory set (the streaming
    path applies them in the Ray Data pipeline)."""
    val: Any = None
    """Ray ObjectRef of the decoded val split (``pixels``, ``label``) for ``train.select_best`` (rank 0 validates)."""
    local_checkpoint: str | None = None
    """``train.in_process``: the directory that holds the last epoch's state (Ray Train's local mode persists no
    checkpoint); the loop resumes from it and logs each epoch to MLflow once it is written."""
    distill: bool = False
    """Whether the ``unlabelled`` dataset is the distilled pool (image, target): each step adds the distillation
    term (``train.distill``, engine.train.step)."""

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole budget; the LR schedule is never stepped past it."""
        return self.train.epochs * self.steps_per_epoch

    @property
    def online(self) -> bool:
        """Whether the FixMatch-style unlabelled branch runs."""
        return self.train.online_policy is not None


def make_loop_config(spec: LoopSpec) -> dict[str, Any]:
    """The plain, JSON-able ``train_loop_config`` for :func:`train_loop_per_worker`."""
    return {
        "train": to_dict(spec.train),
        "model": to_dict(spec.model),
        "label_space": {"name": spec.label_space.name, "classes": list(spec.label_space.classes)},
        "steps_per_epoch": spec.steps_per_epoch,
        "call_id": spec.call_id,
        "init_checkpoint": spec.init_checkpoint,
        "num_unlabelled": spec.num_unlabelled,
        "policy_params": None if spec.policy_params is None else dict(spec.policy_params),
        "mlflow": None if spec.mlflow is None else dict(spec.mlflow),
        "fault_after_epoch": spec.fault_after_epoch,
        "memory": spec.memory,
        "repeat_factors": None if spec.repeat_factors is None else list(spec.repeat_factors),
        "val": spec.val,
        "local_checkpoint": spec.local_checkpoint,
        "distill": spec.distill,
    }


def parse_loop_config(config: Mapping[str, Any]) -> LoopSpec:
    """Inverse of :func:`make_loop_config`."""
    ls = config["label_space"]
    return LoopSpec(
        train=build(TrainConfig, config["train"], where="train_loop_config", prefix="train."),
        model=build(ModelConfig, config["model"], where="train_loop_config", prefix="model."),
        label_space=LabelSpace(ls["name"], tuple(ls["classes"])),
        steps_per_epoch=int(config["steps_per_epoch"]),
        call_id=str(config["call_id"]),
        init_checkpoint=config.get("init_checkpoint"),
        num_unlabelled=int(config.get("num_unlabelled") or 0),
        policy_params=config.get("policy_params"),
        mlflow=config.get("mlflow"),
        fault_after_epoch=config.get("fault_after_epoch"),
        memory=config.get("memory"),
        repeat_factors=None if config.get("repeat_factors") is None else tuple(config["repeat_factors"]),
        val=config.get("val"),
        local_checkpoint=config.get("local_checkpoint"),
        distill=bool(config.get("distill")),
    )


@dataclass(kw_only=True)
class Trainee(Fit):
    """The student and everything that steps with it (a :class:`~engine.train.fit.Fit`), its online policy and
    history; ``start_epoch`` is where this attempt begins."""

    policy: ThresholdPolicy | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best: dict[str, Any] | None = None
    """``{"epoch", "val_macro_f1", "model"}`` of the best validated epoch so far (rank 0 with ``select_best``)."""

    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and exported: the EMA when enabled, else the bare model."""
        return self.ema.module if self.ema is not None else _bare(self.model)

    def state(self, epoch: int) -> TrainState:
        """The checkpointable state after ``epoch``."""
        assert self.scheduler is not None and self.scaler is not None
        return TrainState(
            ema=None if self.ema is None else self.ema.state_dict(),
            best=self.best,
            model=_bare(self.model).state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            epoch=epoch,
            global_step=int(self.scheduler.last_epoch),
            policy=None if self.policy is None else _jsonable_policy_state(self.policy),
            history=self.history,
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the student on this worker's shards; report metrics and a checkpoint after every epoch.

    Resumes from ``ray.train.get_checkpoint()`` (model, optimiser, scheduler, grad scaler, epoch, online policy
    state, history) when the run has one, else warm-starts from ``init_checkpoint`` when given. Only rank 0 writes
    the checkpoint directory and logs to MLflow.
    """
    import ray.train
    import ray.train.torch
    import torch

    spec = parse_loop_config(config)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    threads = spec.train.torch_threads or worker_threads(context.get_local_world_size())
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    amp_dtype = autocast_dtype(spec.train, device)
    t = setup_trainee(spec, amp_dtype=amp_dtype)
    ctx = StepContext(
        model_cfg=spec.model,
        aug=Augmenters.default(),
        device=device,
        num_classes=len(spec.label_space),
        lambda_u=spec.train.lambda_u,
        amp_dtype=amp_dtype,
        policy=t.policy,
        loss=SupervisedLoss(spec.model, spec.label_space, LossWeights.from_train(spec.train)),
        distill_temperature=spec.train.distill_temperature if spec.distill else None,
        distill_weight=spec.train.distill_weight,
    )
    unlabelled = _unlabelled_stream(spec, rank) if t.policy is not None or spec.distill else None
    todo = t.start_epoch < spec.train.epochs
    mem = _memory_shard(spec.memory, rank, context.get_world_size()) if spec.memory is not None and todo else None
    val = MemorySet(ray.get(spec.val)) if spec.val is not None and rank == 0 and todo else None
    for epoch in range(t.start_epoch, spec.train.epochs):
        record = run_epoch(epoch, t, ctx, spec, rank, unlabelled, mem)
        record["threads"], record["in_memory"] = threads, mem is not None
        if val is not None and epoch >= first_val_epoch(spec.train):
            record.update(validate(t, val, spec, device, epoch))
        t.history.append(record)
        _report(record, t.state(epoch) if rank == 0 else None, spec)  # MLflow: callbacks.py, or _report in process
        if spec.fault_after_epoch is not None and epoch == spec.fault_after_epoch:
            raise RuntimeError(f"injected test fault after epoch {epoch} (fault_after_epoch)")


def setup_trainee(spec: LoopSpec, *, amp_dtype: torch.dtype | None) -> Trainee:
    """Build the student, optimiser, cosine scheduler, grad scaler and online policy on this worker, restored from
    the run's latest Ray Train checkpoint if there is one, else warm-started from ``spec.init_checkpoint`` if set."""
    import ray.train
    import ray.train.torch
    import torch

    from engine.models.factory import create_model

    torch.manual_seed(derive_seed(spec.train.seed, 0, 0, 0))  # identical initial weights on every rank
    model = create_model(spec.model, len(spec.label_space), label_space=spec.label_space)
    restored = restored_state(spec.local_checkpoint)
    if restored is not None:
        model.load_state_dict(restored.model)
    elif spec.init_checkpoint:
        warm_start(model, spec)
    temporal = getattr(model, "temporal", None)
    if temporal is not None:  # sequence members are fitted after the CNN (engine.train.temporal); DDP skips them
        temporal.requires_grad_(False)
    model = ray.train.torch.prepare_model(model)  # to the worker's device; DDP with several workers
    optimizer = build_optimizer(model, spec.train)
    scheduler = build_scheduler(optimizer, spec.train, steps_per_epoch=spec.steps_per_epoch)
    t = Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(enabled=amp_dtype == torch.float16),
        policy=build_online_policy(spec) if spec.online else None,
        ema=WeightEMA(_bare(model), spec.train.ema_decay) if spec.train.ema_decay > 0 else None,
        total_steps=spec.total_steps,
    )
    if restored is not None:
        if t.ema is not None and restored.ema is not None:
            t.ema.load_state_dict(restored.ema)
        t.best = restored.best
        t.optimizer.load_state_dict(restored.optimizer)
        scheduler.load_state_dict(restored.scheduler)
        if restored.scaler:
            t.scaler.load_state_dict(restored.scaler)
        if t.policy is not None and restored.policy is not None:
            t.policy.load_state_dict(restored.policy)
        t.history, t.start_epoch = list(restored.history), restored.epoch + 1
        logger.info("resumed at epoch %d of %d", t.start_epoch, spec.train.epochs)
    return t


def restored_state(local_checkpoint: str | None) -> TrainState | None:
    """The state of the run's latest checkpoint: Ray Train's, or in process the newest local epoch under
    ``local_checkpoint``; None for a run that has none yet."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return read_train_state(directory)
    if local_checkpoint is not None and (local := latest_local_state(local_checkpoint)) is not None:
        return read_train_state(local)
    return None


def run_epoch(
    epoch: int,
    t: Trainee,
    ctx: StepContext,
    spec: LoopSpec,
    rank: int,
    unlabelled: Iterator[NumpyBatch] | None,
    mem: MemorySet | None = None,
) -> dict[str, Any]:
    """One pass over this worker's supervised shard (from memory when ``mem`` is given, else streamed from Ray
    Data); returns the epoch record (summed over all workers).

    The record holds the mean step losses (``train_loss``, ``loss_s``, ``loss_u``), the LR at the epoch start,
    ``steps``, ``images`` (supervised rows), ``unlabelled_images``, ``soft_images`` (rows with a soft label),
    ``seconds``, ``images_per_s``, ``mask_rate`` (mean unlabelled weight) and the online policy's per-class
    thresholds at the start and the end of the epoch (``thresholds_start`` / ``thresholds``; None for never-labelled
    classes and without the online branch).
    """
    import ray.train
    import torch

    from engine.thresholds import thresholds_to_json

    torch.manual_seed(derive_seed(spec.train.seed, epoch, rank, 1))  # augmentation draws: reproducible per epoch
    t.model.train()
    bs = spec.train.batch_size
    lr = float(t.optimizer.param_groups[0]["lr"])
    thresholds_start = None if ctx.policy is None else thresholds_to_json(ctx.policy.thresholds())
    batches: Iterable[NumpyBatch]
    if mem is not None:
        rng = np.random.default_rng(derive_seed(spec.train.seed, epoch, rank, 2))
        batches = memory_batches(mem, epoch_order(mem, rng, spec.repeat_factors), bs)
    else:
        batches = ray.train.get_dataset_shard(SUPERVISED).iter_batches(
            batch_size=bs,
            batch_format="numpy",
            prefetch_batches=2,
            local_shuffle_buffer_size=max(4 * bs, 1024),
            local_shuffle_seed=derive_seed(spec.train.seed, epoch, rank, 2),
        )

    def step(batch: NumpyBatch) -> StepStats:
        return train_step(t.model, t.optimizer, t.scaler, batch, next(unlabelled) if unlabelled else None, ctx)

    totals = fit_epoch(t, batches, step)
    seconds, first_step_at = totals.seconds, totals.first_step_at
    sums = _sum_over_workers(totals.sums, ctx.device)
    steps, rows, u_rows = int(sums[3]), int(sums[4]), int(sums[5])
    if steps == 0:
        raise EngineError(
            f"epoch {epoch}: the supervised shards are empty, nothing to train on; give more labelled rows than "
            f"train.num_workers={spec.train.num_workers}"
        )
    return {
        "epoch": epoch,
        "call_id": spec.call_id,
        "train_loss": sums[0] / steps,
        "loss_s": sums[1] / steps,
        "loss_u": sums[2] / steps,
        "lr": lr,
        "steps": steps,
        "images": rows,
        "unlabelled_images": u_rows,
        "soft_images": int(sums[7]),
        "seconds": seconds,
        "images_per_s": rows / seconds if seconds > 0 else 0.0,
        "first_step_at": first_step_at,
        "mask_rate": sums[6] / u_rows if u_rows else None,
        "thresholds_start": thresholds_start,
        "thresholds": None if ctx.policy is None else thresholds_to_json(ctx.policy.thresholds()),
    }


def worker_threads(local_workers: int) -> int:
    """torch threads of one training worker: this node's usable cores shared among its ``local_workers`` workers."""
    from engine.runtime import local_cores

    return max(1, local_cores() // max(local_workers, 1))


def first_val_epoch(cfg: TrainConfig) -> int:
    """The first epoch validated with ``select_best``: ``floor(val_from * epochs)``, at most the last epoch."""
    return min(math.floor(cfg.val_from * cfg.epochs), cfg.epochs - 1)


def validate(t: Trainee, val: MemorySet, spec: LoopSpec, device: torch.device, epoch: int) -> dict[str, Any]:
    """Val macro-F1 / accuracy of the kept weights (the EMA when enabled) after ``epoch``, with the evaluate stage's
    prediction path and metric (engine.models.teacher, engine.metrics); a new best replaces ``t.best``.

    Returns:
        ``val_macro_f1``, ``val_accuracy``, ``val_seconds`` for the epoch record.
    """
    from engine.metrics import classification_metrics
    from engine.models.teacher import CheckpointTeacher

    t0 = time.perf_counter()
    model = t.kept_model()
    was_training = model.training
    model.eval()
    teacher = CheckpointTeacher.from_model(
        model, spec.model, spec.label_space, device=device, tta_flip=spec.train.tta_flip
    )
    pixels = val.pixels
    bs = max(256, spec.train.batch_size)
    probs = np.concatenate([teacher.predict(to_images(pixels[i : i + bs])).probs for i in range(0, len(pixels), bs)])
    model.train(was_training)
    y = np.asarray(val.columns["label"], np.int64)
    m = classification_metrics(y, probs.argmax(1), list(spec.label_space.classes))
    f1 = float(m["macro_f1"])
    if t.best is None or f1 > float(t.best["val_macro_f1"]):
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        t.best = {"epoch": epoch, "val_macro_f1": f1, "model": state}
    return {"val_macro_f1": f1, "val_accuracy": float(m["accuracy"]), "val_seconds": time.perf_counter() - t0}


def _memory_shard(ref: Any, rank: int, world: int) -> MemorySet:
    """This worker's rows (every ``world``-th from ``rank``) of the driver's decoded supervised set."""
    import ray

    columns: dict[str, Any] = ray.get(ref)
    if world > 1:
        take = np.arange(rank, len(columns["pixels"]), world)
        columns = {c: v[take] for c, v in columns.items()}
    return MemorySet(columns)


def build_online_policy(spec: LoopSpec) -> ThresholdPolicy:
    """The online threshold policy ``train.online_policy`` with ``policy_params`` (class names in ``never_label``
    are mapped to indices of the label space), ``num_classes`` and ``num_unlabelled``.

    Raises:
        ConfigError: unknown or offline-only policy, invalid parameters, or no unlabelled pool size.
    """
    from engine.thresholds import policy_class
    from engine.thresholds.registry import build_policy

    name = spec.train.online_policy
    assert name is not None
    if not policy_class(name).supports_online:
        raise ConfigError(f"train.online_policy={name!r} has no online form; use dtm_r, flexmatch, fixed, ...")
    if spec.num_unlabelled < 1:
        raise ConfigError(f"train.online_policy={name!r} needs num_unlabelled >= 1 (the pool size N_u)")
    return build_policy(name, spec.policy_params or {}, spec.label_space, num_unlabelled=spec.num_unlabelled)


def warm_start(model: torch.nn.Module, spec: LoopSpec) -> None:
    """Load the weights of the engine checkpoint ``spec.init_checkpoint`` (same architecture, labels, input size).

    Raises:
        ConfigError: the checkpoint's architecture, label space or input size differ from the student's.
    """
    from engine.models.checkpoint import load_checkpoint

    path = spec.init_checkpoint
    assert path is not None
    loaded = load_checkpoint(path, expect_label_space=spec.label_space, expect_input_size=spec.model.input_size)
    mismatch = state_dict_mismatch(loaded.model.state_dict(), model.state_dict())
    if loaded.model_cfg.name != spec.model.name or mismatch:
        raise ConfigError(
            f"warm start: {path} holds {loaded.model_cfg.name} (in_chans={loaded.model_cfg.in_chans}) whose weights "
            f"do not fit the student {spec.model.name} (in_chans={spec.model.in_chans}"
            f"{'' if not mismatch else '; ' + mismatch}); use the teacher's model section or set "
            "train.warm_start=false"
        )
    model.load_state_dict(loaded.model.state_dict())
    logger.info("warm start from %s (fingerprint %s)", path, loaded.fingerprint[:8])


def state_dict_mismatch(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """The first difference between two state dicts' names and shapes, in words; empty when ``source`` fits."""
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    if missing or extra:
        return f"{len(missing)} tensors missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"
    for name, tensor in target.items():
        if tuple(source[name].shape) != tuple(tensor.shape):
            return f"{name} is {tuple(source[name].shape)} in the checkpoint, {tuple(tensor.shape)} in the student"
    return ""


def log_epoch_to_mlflow(tracking: Mapping[str, str], record: Mapping[str, Any], label_space: LabelSpace) -> None:
    """Log one epoch record to the MLflow run ``tracking["run_id"]`` at step ``epoch`` (keys ``train/<metric>``,
    per-class thresholds as ``train/tau/<class>``; missing and infinite values are skipped)."""
    from engine.tracking import epoch_metrics, log_run_metrics

    values = epoch_metrics(record, label_space.classes)
    log_run_metrics(tracking["tracking_uri"], tracking["run_id"], values, int(record["epoch"]))


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed derived from the run seed and (epoch, rank, stream) parts (numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def _unlabelled_stream(spec: LoopSpec, rank: int) -> Iterator[NumpyBatch]:
    import ray.train

    shard = ray.train.get_dataset_shard(UNLABELLED)
    size = spec.train.mu * spec.train.batch_size

    def passes(k: int) -> Any:
        return shard.iter_batches(
            batch_size=size,
            batch_format="numpy",
            local_shuffle_buffer_size=max(4 * size, 1024),
            local_shuffle_seed=derive_seed(spec.train.seed, k, rank, 3),
        )

    return cycle_batches(passes, size)


def _sum_over_workers(values: np.ndarray, device: torch.device) -> np.ndarray:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    from engine.models.checkpoint import unwrap_model

    return unwrap_model(model)


def _jsonable_policy_state(policy: ThresholdPolicy) -> dict[str, Any]:
    from engine.thresholds import to_jsonable

    return to_jsonable(policy.state_dict())


def _report(record: Mapping[str, Any], state: TrainState | None, spec: LoopSpec) -> None:
    """Report the epoch (:func:`report_epoch`); in process, log it to MLflow after its state is committed, as the
    controller's callback would."""
    report_epoch(record, state, spec.local_checkpoint)
    if state is not None and spec.local_checkpoint is not None and spec.mlflow:
        log_epoch_to_mlflow(spec.mlflow, record, spec.label_space)


def report_epoch(record: Mapping[str, Any], state: TrainState | None, local_checkpoint: str | None) -> None:
    """Report an epoch's metrics to Ray Train; rank 0 (the only one given a ``state``) attaches the checkpoint.

    In process (``local_checkpoint``) Ray Train keeps no checkpoint: the state is committed as the run's newest local
    epoch (engine.train.state.save_local_state) and reported from there.
    """
    import ray.train

    metrics = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    metrics["thresholds_json"] = json.dumps(record.get("thresholds"))
    if state is None:
        ray.train.report(metrics, checkpoint=None)
        return
    if local_checkpoint is not None:
        directory = save_local_state(local_checkpoint, state.epoch, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        return
    with tempfile.TemporaryDirectory(prefix="engine-train-") as directory:
        write_train_state(directory, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
