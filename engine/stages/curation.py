"""Curation stage: flag label issues in the campaign's labelled set.

Label issues come from **out-of-fold** probabilities: the labelled set is split into K stratified folds (seeded key
hash, so the split is stable across re-runs and machines); for each fold a fresh network of the campaign's model is
trained on the other K-1 folds with the engine's own training step (same loss, augmentation, optimiser and cosine
schedule as the student) and predicts the held-out fold. Every probability vector therefore comes from a model that
never saw that sample, which is what cleanlab's confident learning assumes. The round's own teacher and student were
trained on the whole labelled set, so their probabilities on it are in-sample (memorised labels look clean) and are
not used. Folds run as independent Ray tasks, one CPU (or GPU) each. The stage depends only on the labelled set,
model and training settings, so a later round with the same fingerprint copies an earlier round's outputs.

Outputs in ``<round>/curation/``: ``oof_probs.parquet`` (every labelled row: key, given label, fold, probs) and
``label_issues.parquet`` (flagged rows only, worst first), then ``_SUCCESS.json``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from engine.config import CurationConfig, ModelConfig, TrainConfig, model_fingerprint_fields
from engine.errors import ConfigError, MissingExtra
from engine.io import fs
from engine.labels import LabelSpace
from engine.layout import RoundLayout, join
from engine.partition_rule import keys_uniform
from engine.schemas import LABEL_ISSUES_SCHEMA
from engine.stages.base import RunOutput, Stage, StageContext, committed
from engine.stored import RoundRef

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def curation_dir(lay: RoundLayout) -> str:
    """``<round>/curation``: outputs of the curation stage of a round."""
    return lay.curation_dir


def label_issues_path(lay: RoundLayout) -> str:
    """``<round>/curation/label_issues.parquet``."""
    return join(curation_dir(lay), "label_issues.parquet")


def oof_probs_path(lay: RoundLayout) -> str:
    """``<round>/curation/oof_probs.parquet``."""
    return join(curation_dir(lay), "oof_probs.parquet")


# ---------------------------------------------------------------------- folds and cleanlab (pure)


def assign_folds(keys: list[str], labels: npt.NDArray[np.integer[Any]], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Stratified fold of each row: within each class, rows ordered by a seeded key hash are dealt round-robin.

    Deterministic (depends only on keys, labels, k and seed), so re-runs and other machines get the same folds.

    Returns:
        (N,) int64 in [0, k); every class with n_c rows puts floor(n_c / k) or ceil(n_c / k) of them in each fold.
    """
    y = np.asarray(labels, dtype=np.int64)
    u = keys_uniform(seed, keys)
    folds = np.zeros(len(keys), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        order = idx[np.lexsort((np.array([keys[i] for i in idx], dtype=object), u[idx]))]
        folds[order] = np.arange(len(order)) % k
    return folds


def find_issues(
    labels: npt.NDArray[np.integer[Any]], probs: npt.NDArray[np.floating[Any]], *, filter_by: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """cleanlab's ``find_label_issues`` and self-confidence label quality of out-of-fold probabilities.

    Classes of the label space with no labelled row (e.g. ``Other`` on FER2013) are dropped before cleanlab (it needs
    every class present) and the rows renormalised over the present classes.

    Args:
        labels: (N,) given labels in [0, C).
        probs: (N, C) out-of-fold probabilities.
        filter_by: cleanlab method (see :class:`engine.config.CurationConfig`).

    Returns:
        ``(is_issue (N,) bool, quality (N,) float64 in [0, 1])``.

    Raises:
        MissingExtra: cleanlab is not installed.
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:
        raise MissingExtra("label-issue flags need cleanlab: pip install -e '.[curation]'") from exc
    y = np.asarray(labels, dtype=np.int64)
    present = np.flatnonzero(np.bincount(y, minlength=probs.shape[1]) > 0)
    remap = np.full(probs.shape[1], -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    p = np.asarray(probs, dtype=np.float64)[:, present]
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    y2 = remap[y]
    # n_jobs=1: cleanlab's default forks a process pool, and forking a process that runs Ray's, torch's and MLflow's
    # threads can deadlock the child on a lock held at fork time (seen in the full test suite)
    is_issue = find_label_issues(y2, p, filter_by=filter_by, n_jobs=1)
    quality = get_label_quality_scores(y2, p, method="self_confidence")
    return np.asarray(is_issue, dtype=bool), np.asarray(quality, dtype=np.float64)


# ---------------------------------------------------------------------- one fold (runs in a Ray task)


def fit_predict(
    train_images: list[bytes],
    train_labels: npt.NDArray[np.int64],
    test_images: list[bytes],
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    space: LabelSpace,
    epochs: int,
    seed: int,
) -> npt.NDArray[np.float32]:
    """Train a fresh ``model_cfg`` network on (images, labels) with the engine's training step; predict others.

    Same loss (weighted CE), weak augmentation, optimiser and cosine LR schedule as the student
    (:mod:`engine.train.step`), single process, on the GPU when one is visible.

    Returns:
        (M, C) float32 softmax probabilities of ``test_images``.
    """
    import torch

    from engine.models.factory import create_model
    from engine.train.batch import Augmenters
    from engine.train.fit import Fit, fit_epoch
    from engine.train.optim import autocast_dtype, build_optimizer, cosine_factor
    from engine.train.step import StepContext, train_step

    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_classes = len(space.classes)
    model = create_model(model_cfg, num_classes).to(device)
    opt = build_optimizer(model, train_cfg)
    bs = min(train_cfg.batch_size, len(train_images))
    steps = epochs * math.ceil(len(train_images) / bs)
    amp = autocast_dtype(train_cfg, device)
    fit = Fit(
        model,
        opt,
        scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine_factor(k, total_steps=steps)),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
    )
    ctx = StepContext(model_cfg, Augmenters.default(), device, num_classes, train_cfg.lambda_u, amp)
    rng = np.random.default_rng(seed)
    images = np.empty(len(train_images), dtype=object)
    images[:] = train_images

    def batches(order: npt.NDArray[np.int64]) -> Iterator[dict[str, Any]]:
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            yield {
                "image": images[idx],
                "label": train_labels[idx],
                "weight": np.ones(len(idx), np.float32),
                "strong": np.zeros(len(idx), bool),
            }

    model.train()
    for _ in range(epochs):
        fit_epoch(
            fit,
            batches(rng.permutation(len(train_images))),
            lambda b: train_step(model, opt, fit.scaler, b, None, ctx),
        )
    return _predict(model, test_images, model_cfg, device, space)


def _predict(
    model: torch.nn.Module, images: list[bytes], model_cfg: ModelConfig, device: torch.device, space: LabelSpace
) -> npt.NDArray[np.float32]:
    """Softmax probabilities of ``images`` through the engine's one predictor (as teachers and validation)."""
    from engine.imaging import decode_pixels
    from engine.models.teacher import CheckpointTeacher

    teacher = CheckpointTeacher.from_model(model.eval(), model_cfg, space, device=device)
    out = [teacher.predict([decode_pixels(b) for b in images[i : i + 256]]).probs for i in range(0, len(images), 256)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(space.classes)), np.float32)


def _fold_task(
    data: dict[str, Any], fold: int, *, model_cfg: ModelConfig, train_cfg: TrainConfig, epochs: int, seed: int
) -> tuple[int, npt.NDArray[np.float32]]:
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    folds, labels, images = data["folds"], data["labels"], data["images"]
    train = np.flatnonzero(folds != fold)
    test = np.flatnonzero(folds == fold)
    probs = fit_predict(
        [images[i] for i in train],
        labels[train],
        [images[i] for i in test],
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        space=data["space"],
        epochs=epochs,
        seed=seed + 1000 * fold,
    )
    return fold, probs


def cross_val_probs(
    images: list[bytes],
    labels: npt.NDArray[np.int64],
    folds: npt.NDArray[np.int64],
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    space: LabelSpace,
    epochs: int,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """Out-of-fold probabilities: fold f's rows are predicted by a model trained on every other fold.

    One Ray task per fold (1 CPU, or 1 GPU when the cluster has GPUs); the images are put in the object store once.

    Returns:
        (N, C) float32.
    """
    from engine.runtime import cluster_gpus, ray_started

    ray = ray_started()

    data = ray.put({"images": images, "labels": labels, "folds": folds, "space": space})
    remote: Any = ray.remote
    task = remote(num_cpus=1, num_gpus=1 if cluster_gpus() > 0 else 0)(_fold_task)
    refs = [
        task.remote(data, int(f), model_cfg=model_cfg, train_cfg=train_cfg, epochs=epochs, seed=seed)
        for f in np.unique(folds)
    ]
    probs = np.zeros((len(labels), len(space.classes)), np.float32)
    for fold, p in ray.get(refs):
        probs[folds == fold] = p
    return probs


# ---------------------------------------------------------------------- the stage


class LabelIssuesStage(Stage):
    """K-fold out-of-fold probabilities on the campaign's labelled set → cleanlab → ``curation/``."""

    name = "curation"
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        if ctx.round is None:
            raise ConfigError("the curation stage needs a context naming its round")
        self.ref = RoundRef(ctx.root, ctx.cfg.campaign.name, ctx.round, ctx.cfg)
        self.cfg: CurationConfig = ctx.cfg.curation

    @property
    def out_dir(self) -> str:
        return curation_dir(self.ref.layout)

    def inputs(self) -> tuple[str, ...]:
        return ("partition",)

    def outputs(self) -> tuple[str, ...]:
        return (oof_probs_path(self.ref.layout), label_issues_path(self.ref.layout))

    def resources(self) -> dict[str, float]:
        return {"CPU": 1.0}  # one task at a time makes progress

    def fingerprint_inputs(self) -> dict[str, Any]:
        t = self.ref.cfg.train
        return {
            "curation": asdict(self.cfg),
            "model": model_fingerprint_fields(self.ref.cfg.model),
            "train": {k: getattr(t, k) for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "seed")},
            "partition": self.ctx.fingerprint_of("partition"),
        }

    def run(self) -> RunOutput:
        reused = self._reuse_earlier_round()
        if reused is not None:
            return reused
        ref, names = self.ref, list(self.ref.space.classes)
        labelled = fs.read_parquet(ref.campaign_layout.labelled).sort_by("key")
        keys = labelled["key"].to_pylist()
        labels = labelled["label"].to_numpy().astype(np.int64)
        images = labelled_images(ref.root, labelled)
        folds = assign_folds(keys, labels, self.cfg.folds, ref.cfg.campaign.seed)
        probs = cross_val_probs(
            [images[k] for k in keys],
            labels,
            folds,
            model_cfg=ref.cfg.model,
            train_cfg=ref.cfg.train,
            space=ref.space,
            epochs=self.cfg.epochs or ref.cfg.train.epochs,
            seed=ref.cfg.train.seed,
        )
        is_issue, quality = find_issues(labels, probs, filter_by=self.cfg.filter_by)
        fs.write_parquet(
            oof_probs_path(ref.layout),
            pa.table(
                {
                    "key": keys,
                    "given_label": pa.array(labels.astype(np.int16)),
                    "fold": pa.array(folds.astype(np.int16)),
                    "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), len(names)),
                }
            ),
        )
        table = issues_table(keys, labelled["shard"].to_pylist(), labels, probs, folds, is_issue, quality, names)
        fs.write_parquet(label_issues_path(ref.layout), table)
        per_class = np.bincount(labels[is_issue], minlength=len(names))
        oof_acc = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
        log.info("%s: %d of %d labelled samples flagged", self.label, int(is_issue.sum()), len(keys))
        return RunOutput(
            counts={"labelled": len(keys), "flagged": int(is_issue.sum()), "oof_accuracy": round(oof_acc, 4)},
            extra={"flagged_per_class": dict(zip(names, per_class.tolist(), strict=True))},
        )

    def _reuse_earlier_round(self) -> RunOutput | None:
        """Copy the outputs of the latest earlier round committed with the same fingerprint (same labelled set, model
        and training settings give the same folds and models), instead of training K models again."""
        from engine.layout import SUCCESS

        fp = self.fingerprint()
        for r in range(self.ref.index - 1, -1, -1):
            lay = self.ref.campaign_layout.round(r)
            marker = fs.read_json_or_none(join(curation_dir(lay), SUCCESS))
            if marker is None or marker.get("fingerprint") != fp:
                continue
            for src, dst in ((oof_probs_path(lay), oof_probs_path(self.ref.layout)),
                             (label_issues_path(lay), label_issues_path(self.ref.layout))):  # fmt: skip
                fs.write_bytes(dst, fs.read_bytes(src))
            log.info("%s: same fingerprint as round r%03d, outputs copied", self.label, r)
            return RunOutput(counts=marker["counts"], extra={**marker.get("extra", {}), "copied_from_round": r})
        return None


def issues_table(
    keys: list[str],
    shards: list[str],
    labels: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float32],
    folds: npt.NDArray[np.int64],
    is_issue: npt.NDArray[np.bool_],
    quality: npt.NDArray[np.float64],
    names: list[str],
) -> pa.Table:
    """The flagged rows as ``LABEL_ISSUES_SCHEMA``, ordered by quality ascending then key."""
    idx = np.flatnonzero(is_issue)
    idx = idx[np.lexsort((np.array([keys[i] for i in idx], dtype=object), quality[idx]))]
    sugg = probs.argmax(1)
    return pa.table(
        {
            "key": [keys[i] for i in idx],
            "shard": [shards[i] for i in idx],
            "given_label": labels[idx].astype(np.int16),
            "given_name": [names[labels[i]] for i in idx],
            "suggested_label": sugg[idx].astype(np.int16),
            "suggested_name": [names[sugg[i]] for i in idx],
            "quality": quality[idx].astype(np.float32),
            "given_prob": probs[idx, labels[idx]].astype(np.float32),
            "fold": folds[idx].astype(np.int16),
        },
        schema=LABEL_ISSUES_SCHEMA,
    )


def labelled_images(root: str, labelled: pa.Table) -> dict[str, bytes]:
    """Encoded image bytes of every row of a (key, shard) table, one Ray task per shard (the set is small)."""
    from engine.io.tars import read_images
    from engine.layout import shard_tar
    from engine.runtime import ray_started

    ray = ray_started()

    by_shard: dict[str, list[str]] = {}
    for k, s in zip(labelled["key"].to_pylist(), labelled["shard"].to_pylist(), strict=True):
        by_shard.setdefault(s, []).append(k)

    def read(item: dict[str, Any]) -> dict[str, Any]:
        got = read_images(shard_tar(root, item["shard"]), set(item["keys"]))
        return {"keys": list(got), "images": list(got.values())}

    items = [{"shard": s, "keys": ks} for s, ks in sorted(by_shard.items())]
    out: dict[str, bytes] = {}
    for r in ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(read).iter_rows():
        out.update(zip(r["keys"], r["images"], strict=True))
    missing = set(labelled["key"].to_pylist()) - set(out)
    if missing:
        raise RuntimeError(f"{len(missing)} labelled keys have no image in their shard, e.g. {sorted(missing)[0]}")
    return out


def run_label_issues(ref: RoundRef) -> Any:
    """Run (or skip when committed) the label-issue stage of a finished round; returns its StageResult."""
    return LabelIssuesStage(round_context(ref)).execute()


def round_context(ref: RoundRef) -> StageContext:
    """The stage context of a stored round: its config, and its campaign's committed partition as upstream."""
    partition = committed(ref.campaign_layout.partition_dir)
    if partition is None:
        raise ConfigError(f"{ref.campaign_layout.partition_dir} is not committed; run the campaign first")
    return StageContext(ref.cfg, round=ref.index, upstream={"partition": partition})
