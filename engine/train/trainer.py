"""Driver side of student training: prepare the streams, run a resumable TorchTrainer, export the final model."""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.config import ModelConfig, TrainConfig
from engine.errors import ConfigError, EngineError
from engine.io import fs
from engine.labels import LabelSpace
from engine.train import data
from engine.train.loop import SUPERVISED, UNLABELLED, LoopSpec, build_online_policy, make_loop_config

if TYPE_CHECKING:
    import ray.data

    from engine.train.state import TrainState

logger = logging.getLogger(__name__)


def train_student(
    *,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    label_space: LabelSpace,
    labelled: ray.data.Dataset,
    pseudo: ray.data.Dataset | None,
    unlabelled: ray.data.Dataset | None,
    num_unlabelled: int = 0,
    distill: ray.data.Dataset | None = None,
    val: ray.data.Dataset | None = None,
    storage_path: str,
    run_name: str,
    init_checkpoint: str | None,
    out_checkpoint: str,
    mlflow: Mapping[str, str] | None = None,
    policy_params: Mapping[str, Any] | None = None,
    fault_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train the student on Ray Train and write its final engine checkpoint.

    Data. Each epoch is one pass over labelled ∪ pseudo (block order reshuffled each epoch, plus a local shuffle
    buffer). Labelled rows get loss weight 1 and the weak augmentation; pseudo rows get loss weight
    ``lambda_u * weight`` and the strong augmentation. The supervised loss is the plain batch mean
    ``L_s = (1/B) * sum_b w_b * CE_b`` (not divided by the sum of weights, so a pseudo row of weight 0.5 counts half a
    labelled row). With ``train_cfg.soft_labels`` a pseudo row's ``CE_b`` is ``-sum_c t_bc log p_bc`` against its
    ``target`` column (the teacher's sharpened probabilities) instead of its argmax label. With
    ``train_cfg.balanced_sampling`` the labelled rows are resampled every epoch with per-class repeat factors
    ``r_c = (N / K) / n_c`` (K classes present, stochastic rounding): each class contributes N/K rows in expectation
    and the epoch keeps N labelled rows; pseudo rows are not resampled.

    Online branch (``train_cfg.online_policy`` set and ``unlabelled`` given): each step also draws ``mu * B``
    unlabelled rows (the worker's unlabelled shard, cycled), and adds ``lambda_u * L_u`` with
    ``L_u = sum_u m_u * CE(f(strong(u)), argmax q_u) / (mu * B)``; see engine.train.step.

    Distillation (``distill`` given, ``train_cfg.distill``): each step also draws ``mu * B`` pool rows (cycled) with
    their teacher probabilities ``target`` (already at the distillation temperature T) and adds
    ``distill_weight * T² * mean_u KL(target_u ‖ softmax(f(strong(u)) / T))`` (engine.train.losses.distill_loss).

    Optimisation: SGD Nesterov (momentum 0.9) or AdamW, ``lr`` and ``weight_decay`` from ``train_cfg`` (no decay on
    biases and norm layers), cosine factor ``cos(7*pi*k / (16*K))`` over the K steps of the epoch budget, bf16/fp16
    autocast on GPU when ``mixed_precision``.

    Resume. Every epoch ends with a Ray Train checkpoint under ``storage_path/run_name`` (model, optimiser,
    scheduler, epoch, online policy state, per-epoch history; the 2 newest kept). Calling again with the same
    ``run_name`` continues after the last finished epoch, and a finished run does not train again.

    Args:
        labelled: columns ``image`` (encoded bytes) and ``label`` (int64 in [0, len(label_space))).
        pseudo: columns ``image``, ``label``, ``weight`` (float32), or None.
        unlabelled: columns ``image``, ``idx`` (int64 in [0, num_unlabelled)); used only by the online branch.
        num_unlabelled: the unlabelled pool size N_u (indices' range; DTM-R's cache size).
        distill: columns ``image``, ``target`` (the teacher's probabilities at T, float32 bytes): the pool rows the
            student distils; None without distillation.
        val: columns ``image``, ``label``: the val split for ``train.select_best`` (required by it, else unused).
        storage_path: Ray Train storage root (local path or URI); the run lives in ``storage_path/run_name``.
        run_name: Ray Train run name; give every round its own.
        init_checkpoint: engine checkpoint to warm-start from (same architecture, label space and input size): the
            caller passes the teacher's when ``train_cfg.warm_start``; ignored when the run resumes.
        out_checkpoint: where the final engine checkpoint is written (atomically).
        mlflow: ``{"tracking_uri": ..., "run_id": ...}`` of an existing run; rank 0 logs ``train/*`` per epoch.
        policy_params: online policy parameters (e.g. ``to_dict(cfg.threshold)``; ``never_label`` may hold class
            names); only the keys the policy declares are used.
        fault_after_epoch: test-only: raise in the worker after that epoch's checkpoint.

    Returns:
        ``epochs`` (finished epochs of the run), ``epochs_run`` and ``resumed_from_epoch`` (this call: how many
        epochs it trained and the epoch it started at), ``train_loss`` (mean step loss of the last epoch),
        ``seconds`` (this call's wall time), ``images_per_s`` (supervised rows per second of epoch time, over all
        epochs), ``online_policy``, ``mask_rate`` (mean unlabelled weight m_u in the last epoch, None offline),
        ``thresholds`` (per-class online thresholds after the last epoch, None offline), ``history`` (per-epoch
        records), ``fingerprint`` (of ``out_checkpoint``), ``run_path`` and ``ray_checkpoint`` (its directory).

    Raises:
        ConfigError: invalid configuration or datasets (missing columns; with balanced sampling, labels outside the
            label space, which are otherwise caught by the workers and fail the run).
        EngineError: training failed (the message gives the run path to resume from).
    """
    t0 = time.monotonic()
    if "://" not in storage_path:  # Ray Train takes a URI or an absolute path; storage roots may be relative
        storage_path = os.path.abspath(storage_path)
    num_classes = len(label_space)
    online = train_cfg.online_policy is not None
    _check_config(train_cfg, online=online, unlabelled=unlabelled, num_unlabelled=num_unlabelled)
    data.check_columns(
        labelled, ("image", "label", *(("valence", "arousal") if model_cfg.va_head else ())), "labelled"
    )
    # Per-class counts need a pass over the label column; a plain count is metadata for parquet / in-memory data.
    counts = data.label_counts(labelled, num_classes, "labelled") if train_cfg.balanced_sampling else None
    rows = int(counts.sum()) if counts is not None else labelled.count()
    soft = train_cfg.soft_labels and pseudo is not None
    if soft and model_cfg.head != "linear":
        raise ConfigError(
            f"train.soft_labels=true needs model.head=linear (one softmax over the classes), got {model_cfg.head!r}"
        )
    if pseudo is not None:
        data.check_columns(pseudo, ("image", "label", "weight", *(("target",) if soft else ())), "pseudo-labelled")
        rows += pseudo.count()
    if train_cfg.select_best:
        if val is None:
            raise ConfigError(
                "train.select_best=true needs the campaign's val split (eval sources with a val split); add one or "
                "set train.select_best=false"
            )
        data.check_columns(val, ("image", "label"), "val")
    if init_checkpoint and not fs.exists(init_checkpoint):
        raise ConfigError(
            f"warm-start checkpoint {init_checkpoint} does not exist; train or import the teacher first, or set "
            "train.warm_start=false"
        )
    if rows < train_cfg.num_workers:
        raise ConfigError(f"{rows} training rows cannot feed train.num_workers={train_cfg.num_workers} workers")
    in_memory = fits_in_memory(train_cfg, model_cfg, rows)
    factors = None if counts is None else tuple(data.balanced_repeat_factors(counts))
    supervised = data.build_supervised_dataset(
        labelled,
        pseudo,
        lambda_u=train_cfg.lambda_u,
        repeat_factors=None if in_memory or factors is None else list(factors),
        seed=train_cfg.seed,
        with_va=model_cfg.va_head,
        soft_targets=soft,
    )
    spec = LoopSpec(
        train=train_cfg,
        model=model_cfg,
        label_space=label_space,
        steps_per_epoch=data.steps_per_epoch(rows, batch_size=train_cfg.batch_size, num_workers=train_cfg.num_workers),
        call_id=uuid.uuid4().hex,
        init_checkpoint=init_checkpoint,
        num_unlabelled=num_unlabelled if online else 0,
        policy_params=policy_params,
        mlflow=mlflow,
        fault_after_epoch=fault_after_epoch,
        memory=put_decoded(supervised, model_cfg, "supervised") if in_memory else None,
        repeat_factors=factors if in_memory else None,
        val=put_decoded(val.select_columns(["image", "label"]), model_cfg, "val") if val is not None else None,
        local_checkpoint=_local_checkpoint(train_cfg, storage_path, run_name),
        distill=distill is not None,
    )
    datasets: dict[str, Any] = {} if in_memory else {SUPERVISED: supervised}
    if online:
        assert unlabelled is not None
        build_online_policy(spec)  # fail fast on the driver with the same parameters the workers use
        data.check_columns(unlabelled, ("image", "idx"), "unlabelled")
        datasets[UNLABELLED] = data.build_unlabelled_dataset(unlabelled, seed=train_cfg.seed)
    elif unlabelled is not None:
        logger.info("train.online_policy is null: the unlabelled dataset is not used")
    if distill is not None:
        if online:
            raise ConfigError("train.distill and train.online_policy both draw the pool each step; set one of them")
        if model_cfg.head != "linear":
            raise ConfigError(
                f"train.distill needs model.head=linear (one softmax over the classes), got {model_cfg.head!r}"
            )
        data.check_columns(distill, ("image", "target"), "distilled pool")
        datasets[UNLABELLED] = data.shuffled_blocks(distill.select_columns(["image", "target"]), seed=train_cfg.seed)
    result = _fit(spec, datasets, storage_path=storage_path, run_name=run_name)
    return _export(result, spec, out_checkpoint=out_checkpoint, seconds_since=t0)


def put_decoded(ds: ray.data.Dataset, model_cfg: ModelConfig, what: str) -> Any:
    """Decode ``ds`` (``image`` bytes + other columns) on the driver, Ray Data reading the shards in parallel, and
    put the uint8 columns (engine.train.memory) in the object store once for every worker and every attempt."""
    import ray

    from engine.train.memory import decode_rows

    t0 = time.monotonic()
    # Rows in the dataset's order, whatever order the parallel reads finish in: the seeded epoch permutations then
    # draw the same batches on every run (without it a round's student changed from run to run).
    ds.context.execution_options.preserve_order = True
    mem = decode_rows(ds.iter_batches(batch_size=1024, batch_format="numpy", prefetch_batches=2), model_cfg)
    logger.info("%s set decoded: %d rows, %.1f MiB, %.1f s", what, mem.rows, mem.nbytes / 2**20, time.monotonic() - t0)
    return ray.put(mem.columns)


def fits_in_memory(train_cfg: TrainConfig, model_cfg: ModelConfig, rows: int) -> bool:
    """Whether each worker's share of ``rows`` supervised rows, decoded to uint8 at the model's input size, fits in
    ``train.cache_mb`` (then it is decoded once per round instead of every epoch)."""
    per_worker = math.ceil(rows / train_cfg.num_workers) * model_cfg.in_chans * model_cfg.input_size**2
    return train_cfg.cache_mb > 0 and per_worker <= train_cfg.cache_mb * 2**20


def _check_config(cfg: TrainConfig, *, online: bool, unlabelled: ray.data.Dataset | None, num_unlabelled: int) -> None:
    """What the inputs must hold together (the ranges of each ``train`` key are checked by TrainConfig itself)."""
    if online and (unlabelled is None or num_unlabelled < 1):
        raise ConfigError(
            f"train.online_policy={cfg.online_policy!r} needs the unlabelled dataset and num_unlabelled >= 1 (got "
            f"{'no dataset' if unlabelled is None else 'a dataset'}, num_unlabelled={num_unlabelled}); pass them or "
            "set train.online_policy=null"
        )


def _local_checkpoint(cfg: TrainConfig, storage_path: str, run_name: str) -> str | None:
    """Where an in-process run (``train.in_process``) keeps its epochs: ``<storage_path>/<run_name>/local``."""
    if not cfg.in_process:
        return None
    if not fs.is_local(storage_path):
        raise ConfigError(
            f"train.in_process=true keeps its checkpoints on a local disk, and the run directory {storage_path} is "
            "not local; set train.in_process=false (Ray Train persists to any storage) or use a local storage.root"
        )
    return os.path.join(fs.resolve(storage_path)[1], run_name, "local")


def _fit(spec: LoopSpec, datasets: dict[str, Any], *, storage_path: str, run_name: str) -> Any:
    from engine.train.loop import train_loop_per_worker

    callbacks = []
    if spec.mlflow and not spec.train.in_process:  # in process the loop logs each epoch itself (no controller)
        from engine.train.callbacks import MlflowEpochs

        callbacks.append(MlflowEpochs(spec.mlflow, spec.label_space))
    logger.info("training %s for %d epochs (run %s/%s)", spec.model.name, spec.train.epochs, storage_path, run_name)
    return run_trainer(
        train_loop_per_worker,
        make_loop_config(spec),
        spec.train,
        datasets=datasets,
        storage_path=storage_path,
        run_name=run_name,
        callbacks=callbacks,
    )


def run_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: TrainConfig,
    *,
    datasets: dict[str, Any],
    storage_path: str,
    run_name: str,
    callbacks: Sequence[Any] = (),
    what: str = "student training",
) -> Any:
    """Run ``loop`` on Ray Train (``cfg.num_workers`` workers, or in the driver with ``cfg.in_process``) as the run
    ``storage_path/run_name``: a run of that name with a checkpoint resumes from it. Returns Ray Train's result.

    Raises:
        EngineError: the run failed (the message names the run to resume).
    """
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=0 if cfg.in_process else cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )
    run_path = f"{storage_path.rstrip('/')}/{run_name}"
    try:
        return trainer.fit()
    except EngineError:
        raise
    except Exception as exc:  # Ray Train's TrainingFailedError; in process, the loop's own exception
        if not (cfg.in_process or isinstance(exc, ray.train.TrainingFailedError)):
            raise
        raise EngineError(
            f"{what} failed in run {run_path} ({type(exc).__name__}: {str(exc)[:500]}); fix the cause and call again "
            f"with run_name={run_name!r} to resume from its last finished epoch"
        ) from exc


def _export(result: Any, spec: LoopSpec, *, out_checkpoint: str, seconds_since: float) -> dict[str, Any]:
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model
    from engine.train.state import read_train_state

    if result.checkpoint is None:
        raise EngineError(f"run {result.path} finished without a checkpoint; start it again under a new run name")
    with result.checkpoint.as_directory() as directory:
        state = read_train_state(directory)
    model = create_model(spec.model, len(spec.label_space), label_space=spec.label_space)
    model.load_state_dict(kept_weights(state))
    summary = summarise_history(state.history, call_id=spec.call_id)
    summary["best_epoch"] = None if state.best is None else int(state.best["epoch"])
    summary["best_val_macro_f1"] = None if state.best is None else float(state.best["val_macro_f1"])
    summary["in_memory"] = spec.memory is not None
    summary.update(
        seconds=time.monotonic() - seconds_since,
        online_policy=spec.train.online_policy,
        run_path=str(result.path),
        ray_checkpoint=str(result.checkpoint.path),
    )
    extra = {k: v for k, v in summary.items() if k not in ("history", "run_path", "ray_checkpoint")}
    summary["fingerprint"] = save_checkpoint(
        out_checkpoint, model, model_cfg=spec.model, label_space=spec.label_space, extra={"train": extra}
    )
    summary["history"] = state.history
    if spec.mlflow:
        backfill_mlflow(spec.mlflow, state.history, spec)
    logger.info(
        "student %s: %d epochs (%d this call), loss %.4f, %.1f s",
        out_checkpoint,
        summary["epochs"],
        summary["epochs_run"],
        summary["train_loss"],
        summary["seconds"],
    )
    return summary


def kept_weights(state: TrainState) -> dict[str, Any]:
    """The weights a finished run exports: the best validated epoch's (``train.select_best``), else the EMA's
    (``train.ema_decay`` > 0), else the last epoch's."""
    if state.best is not None:
        return dict(state.best["model"])
    if state.ema is not None:
        return dict(state.ema["module"])
    return state.model


def backfill_mlflow(tracking: Mapping[str, str], history: Sequence[Mapping[str, Any]], spec: LoopSpec) -> int:
    """Log the epochs of ``history`` that the MLflow run lacks; returns how many were logged.

    The training controller logs each epoch right after registering its checkpoint (train/callbacks.py), so a process
    killed between the two leaves a checkpointed epoch without metrics; after a resume this fills the gap, so the run
    holds every epoch exactly once (step = epoch). Presence is judged by ``train/lr`` (``EPOCH_PRESENCE_KEY``), which
    every record has.
    """
    from engine.tracking import EPOCH_PRESENCE_KEY, run_metric_steps
    from engine.train.loop import log_epoch_to_mlflow

    logged = run_metric_steps(tracking["tracking_uri"], tracking["run_id"], EPOCH_PRESENCE_KEY)
    missing = [r for r in history if int(r["epoch"]) not in logged]
    for record in missing:
        log_epoch_to_mlflow(tracking, record, spec.label_space)
    if missing:
        logger.info("MLflow run %s: logged %d checkpointed epoch(s) it lacked", tracking["run_id"], len(missing))
    return len(missing)


def summarise_history(history: Sequence[Mapping[str, Any]], *, call_id: str) -> dict[str, Any]:
    """Final metrics from the per-epoch records of a run (oldest first) for the call ``call_id``.

    Returns:
        ``epochs``, ``epochs_run`` (records written by this call), ``resumed_from_epoch`` (first epoch this call
        trained; ``epochs`` when it trained none), ``train_loss``, ``images_per_s`` and ``soft_images`` (rows trained
        on a soft label; all epochs), ``mask_rate`` and ``thresholds`` (last epoch).
    """
    if not history:
        raise EngineError("the run's checkpoint has no finished epoch; start it again under a new run name")
    last = history[-1]
    mine = [r["epoch"] for r in history if r.get("call_id") == call_id]
    seconds = sum(float(r["seconds"]) for r in history)
    return {
        "epochs": int(last["epoch"]) + 1,
        "epochs_run": len(mine),
        "resumed_from_epoch": int(min(mine)) if mine else int(last["epoch"]) + 1,
        "train_loss": float(last["train_loss"]),
        "images_per_s": sum(int(r["images"]) for r in history) / seconds if seconds > 0 else 0.0,
        "soft_images": sum(int(r.get("soft_images", 0)) for r in history),
        "mask_rate": last.get("mask_rate"),
        "thresholds": last.get("thresholds"),
    }
