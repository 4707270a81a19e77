"""Evaluate stage: a checkpoint on the campaign's val and test splits (deduplicated against training)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from engine.fingerprint import fingerprint
from engine.io import fs
from engine.layout import METRICS, confusion_name, join, root_path, stored_path, video_id
from engine.partition_rule import PartitionRule
from engine.progress import track
from engine.stages.base import RunOutput, Stage, StageContext, TeacherRef
from engine.stages.score import ShardRef, _manifest_cols, list_shards

if TYPE_CHECKING:
    import torch


def _split_rows(ref: ShardRef, rule: PartitionRule, split: str) -> tuple[list[str], list[int]]:
    """Keys and labels of the rows of ``split`` in one shard that the campaign evaluates, in manifest order."""
    m = _manifest_cols(ref.manifest)
    mask = rule.eval_mask(ref.source, split, m["key"], m["split"], m["label"], m["leak_with"])
    rows = [(k, int(lab)) for k, lab, keep in zip(m["key"], m["label"], mask, strict=True) if keep]
    return [k for k, _ in rows], [lab for _, lab in rows]


def _predict_shard(
    item: dict[str, Any],
    *,
    checkpoint: str | list[str],
    rule: dict[str, Any],
    split: str,
    batch_size: int,
    tta_flip: bool = False,
) -> dict[str, Any]:
    import torch

    from engine.imaging import decode_pixels
    from engine.io.tars import read_images
    from engine.models.teacher import EnsembleTeacher, Teacher, worker_teacher

    torch.set_num_threads(1)
    ref = ShardRef(**item)
    r = PartitionRule.from_json(rule)
    keys, labels = _split_rows(ref, r, split)
    if not keys:
        return {"keys": [], "y": np.zeros(0, np.int64), "probs": np.zeros((0, 0), np.float32)}
    images = read_images(ref.tar, set(keys))
    teacher: Teacher
    if isinstance(checkpoint, str):
        teacher = worker_teacher(checkpoint, tta_flip=tta_flip)
    else:  # an ensemble (round 0 with campaign.teacher_members): mean probabilities, each member's kept
        teacher = EnsembleTeacher([worker_teacher(p, tta_flip=tta_flip) for p in checkpoint])
    outs = [
        teacher.predict([decode_pixels(images[k]) for k in keys[i : i + batch_size]])
        for i in range(0, len(keys), batch_size)
    ]
    result = {"keys": keys, "y": np.asarray(labels, np.int64), "probs": np.concatenate([o.probs for o in outs])}
    if not isinstance(checkpoint, str):  # (N, K, C): each member's probabilities
        result["branch"] = np.concatenate([o.branch_probs for o in outs if o.branch_probs is not None])
    if all(o.va is not None for o in outs):  # VA head: predicted and true valence/arousal, (N, 4)
        va = fs.read_parquet(ref.manifest, columns=["key", "valence", "arousal"])
        true = {k: (v, a) for k, v, a in zip(*(va[c].to_pylist() for c in ("key", "valence", "arousal")), strict=True)}
        t = np.array([[np.nan if x is None else x for x in true[k]] for k in keys], dtype=np.float32)
        result["va"] = np.concatenate([np.concatenate([o.va for o in outs if o.va is not None]), t], axis=1)
    if all(o.features is not None for o in outs):  # sequence members: features and video position per row
        pos = fs.read_parquet(ref.manifest, columns=["key", "group", "frame"]).to_pylist()
        where = {p["key"]: p for p in pos}
        result["features"] = np.concatenate([o.features for o in outs if o.features is not None])
        result["videos"] = [video_id(ref.source, where[k]["group"], where[k]["frame"]) for k in keys]
        result["frames"] = [where[k]["frame"] for k in keys]
    return result


def split_samples(root: str, rule: PartitionRule, split: str) -> Any:
    """A pyarrow table (key, image bytes, label) of every evaluated row of ``split`` (the rows :func:`predict_split`
    scores), ordered by key; read on the caller's process, so meant for val-sized splits."""
    import pyarrow as pa

    from engine.io.tars import read_images

    keys: list[str] = []
    images: list[bytes] = []
    labels: list[int] = []
    for ref in list_shards(root, rule.eval_sources):
        wanted = dict(zip(*_split_rows(ref, rule, split), strict=True))
        if not wanted:
            continue
        blobs = read_images(ref.tar, set(wanted))
        for k in sorted(wanted):
            keys.append(k)
            images.append(blobs[k])
            labels.append(wanted[k])
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    return pa.table(
        {
            "key": pa.array([keys[i] for i in order], pa.string()),
            "image": pa.array([images[i] for i in order], pa.binary()),
            "label": pa.array([labels[i] for i in order], pa.int64()),
        }
    )


def _rows_at_most(shards: list[ShardRef], rule: PartitionRule, split: str, limit: int) -> bool:
    """Whether ``split`` has at most ``limit`` evaluated rows (manifests read until the count passes it)."""
    n = 0
    for ref in shards:
        n += len(_split_rows(ref, rule, split)[0])
        if n > limit:
            return False
    return True


def _predict_here(items: list[dict[str, Any]], kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """:func:`_predict_shard` of each shard in this process; the driver's torch thread count is given back after."""
    import torch

    from engine.runtime import map_items

    threads = torch.get_num_threads()
    try:
        yield from map_items(_predict_shard, items, kwargs, here=True)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class SplitPredictions:
    """A checkpoint's predictions on every evaluated row of one split, ordered by key."""

    keys: list[str]
    y: np.ndarray
    """(N,) true labels."""
    probs: np.ndarray
    """(N, C) the model's probabilities (a sequence model's: its ensemble over each video's frames)."""
    va: np.ndarray | None = None
    """(N, 4) predicted valence, arousal, then the manifest's (NaN where unknown); None without a VA head."""
    members: dict[str, np.ndarray] | None = None
    """(N, C) probabilities of each member: of a sequence model (``cnn``, then ``model.temporal``) or of an ensemble
    (``m0``, ``m1``, ...); None for one plain checkpoint."""


def predict_split(
    root: str,
    rule: PartitionRule,
    checkpoint: str | Sequence[str],
    split: str,
    batch_size: int = 512,
    tta_flip: bool = False,
    *,
    label: str = "predict",
    in_process_rows: int = 0,
) -> SplitPredictions:
    """Predictions of ``checkpoint`` on every evaluated row of ``split`` (one Ray task per shard; with ``tta_flip``
    the mean of each image's and its mirror's probabilities; several checkpoints: their ensemble, the mean of their
    probabilities, each member's in ``members``). A split of at most ``in_process_rows`` rows is
    predicted shard by shard in this process instead when Ray is not running yet (``eval.in_process_rows``; never
    on a cluster): the same function with the same single torch thread, so the same predictions, without Ray's
    start-up. Once Ray runs (a campaign after its first Ray stage) its warm workers are the faster way.

    A checkpoint with sequence members gets its per-frame outputs gathered here and its ensemble computed per video
    (engine.models.sequence.sequence_predict), so a video spread over shards is one sequence.
    """
    from engine.runtime import local_work, map_items, ray_running

    shards = list_shards(root, rule.eval_sources)
    items = [ref.__dict__ for ref in shards]
    paths = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    kwargs = {
        "checkpoint": paths[0] if len(paths) == 1 else paths,  # one checkpoint is predicted alone, not as an ensemble
        "rule": rule.to_json(),
        "split": split,
        "batch_size": batch_size,
        "tta_flip": tta_flip,
    }
    here = in_process_rows > 0 and local_work() and not ray_running()
    if here and _rows_at_most(shards, rule, split, in_process_rows):
        rows = _predict_here(items, kwargs)
    else:
        rows = map_items(_predict_shard, items, kwargs, here=False)
    outs = [out for out in track(rows, desc=f"{label} {split}", total=len(items), unit="shards") if len(out["keys"])]
    if not outs:
        return SplitPredictions([], np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    keys = [k for out in outs for k in out["keys"]]
    order = np.argsort(np.array(keys, dtype=object), kind="stable")

    def cat(col: str) -> np.ndarray | None:
        parts = [out.get(col) for out in outs]
        return None if any(p is None for p in parts) else np.concatenate([np.asarray(p) for p in parts])[order]

    probs = cat("probs")
    assert probs is not None
    members = None
    branch = cat("branch")
    if branch is not None:
        members = {f"m{j}": branch[:, j] for j in range(branch.shape[1])}
    feats = cat("features")
    if feats is not None:
        assert isinstance(kwargs["checkpoint"], str)
        from engine.models.checkpoint import load_checkpoint
        from engine.models.sequence import sequence_predict

        loaded = load_checkpoint(kwargs["checkpoint"])
        videos = [v for out in outs for v in out["videos"]]
        frames = [f for out in outs for f in out["frames"]]
        temporal = cast("torch.nn.ModuleDict", loaded.model.temporal)
        probs, stack = sequence_predict(
            temporal,
            probs,
            feats.astype(np.float32),
            [videos[i] for i in order],
            [frames[i] for i in order],
            window=loaded.model_cfg.temporal_window,
            weights=loaded.model_cfg.temporal_weights,
        )
        members = {name: stack[:, j] for j, name in enumerate(["cnn", *temporal.keys()])}
    y = cat("y")
    assert y is not None
    return SplitPredictions([keys[i] for i in order], y, probs, cat("va"), members)


class EvaluateStage(Stage):
    """Macro-F1, accuracy, per-class F1, ABAW2021 score and confusion matrix per split → ``eval/metrics.json``."""

    name = "evaluate"
    RAY = False
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.root, self.cfg, self.space, self.rule = ctx.root, ctx.cfg.eval, ctx.space, ctx.rule
        self.layout = ctx.round_layout

    @property
    def out_dir(self) -> str:
        return self.layout.eval_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition",)

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.metrics, *(self.layout.confusion_png(s) for s in self.cfg.splits))

    @property
    def _given_teacher(self) -> TeacherRef | None:
        """Round 0's teacher given as ``campaign.teacher_checkpoint`` when the round trained no student, else None."""
        return None if "train" in self.ctx.upstream else self.ctx.teacher

    @functools.cached_property
    def checkpoints(self) -> tuple[str, ...]:
        """What the round evaluates: its student; round 0's ensemble (the student, then the members stage's nets,
        ``campaign.teacher_members``); or the round-0 teacher given as ``campaign.teacher_checkpoint``."""
        t = self._given_teacher
        if t is not None:
            return (t.paths[0],)
        members = self.ctx.upstream.get("members")
        if members is not None:
            return tuple(root_path(self.root, p) for p in members.extra["checkpoints"])
        return (self.layout.student,)

    @property
    def checkpoint(self) -> str:
        """The first of :attr:`checkpoints` (the student)."""
        return self.checkpoints[0]

    @functools.cached_property
    def checkpoint_fp(self) -> str:
        """The evaluated checkpoint's fingerprint; an ensemble's is that of its members' fingerprints, in order (the
        teacher record the campaign promotes)."""
        t = self._given_teacher
        if t is not None:
            return t.fingerprint
        from engine.models.checkpoint import checkpoint_fingerprint

        fps = [checkpoint_fingerprint(p) for p in self.checkpoints]
        return fps[0] if len(fps) == 1 else fingerprint("ensemble", fps)

    def resources(self) -> dict[str, float]:
        return {"CPU": 1.0}  # one task at a time makes progress

    def fingerprint_inputs(self) -> dict[str, Any]:
        upstream = {"partition": self.ctx.fingerprint_of("partition")}
        fp: dict[str, Any] = {"splits": self.cfg.splits, "checkpoint": self.checkpoint_fp, "upstream": upstream}
        if self.cfg.tta_flip:  # only when on, so committed evaluations without TTA keep their fingerprint
            fp["tta_flip"] = True
        return fp

    def run(self) -> RunOutput:
        from engine.metrics import classification_metrics
        from engine.plots import confusion_png

        names = list(self.space.classes)
        metrics: dict[str, Any] = {
            "checkpoint": stored_path(self.root, self.checkpoint),
            "checkpoint_fingerprint": self.checkpoint_fp,
        }
        if len(self.checkpoints) > 1:
            metrics["ensemble"] = [stored_path(self.root, p) for p in self.checkpoints]
        counts: dict[str, Any] = {}
        for split in self.cfg.splits:
            pred = predict_split(
                self.root,
                self.rule,
                self.checkpoints,
                split,
                self.cfg.batch_size,
                self.cfg.tta_flip,
                label=self.label,
                in_process_rows=self.cfg.in_process_rows,
            )
            if not pred.keys:
                continue
            y, probs = pred.y, pred.probs
            m = classification_metrics(y, probs.argmax(1), names, probs=probs)
            if pred.va is not None:
                m.update(va_metrics(pred.va))
                counts[f"{split}_ccc_mean"] = m.get("ccc_mean")
            if pred.members is not None:  # sequence or round-0 ensemble: each member alone, for comparison
                m["members"] = {}
                for member, p in pred.members.items():
                    mm = classification_metrics(y, p.argmax(1), names)
                    m["members"][member] = {k: mm[k] for k in ("n", "accuracy", "macro_f1", "abaw2021")}
                    counts[f"{split}_{member}_macro_f1"] = round(float(mm["macro_f1"]), 4)
            metrics[split] = m
            counts[f"{split}_n"] = int(m["n"])
            counts[f"{split}_macro_f1"] = round(float(m["macro_f1"]), 4)
            counts[f"{split}_accuracy"] = round(float(m["accuracy"]), 4)
            confusion_png(
                np.asarray(m["confusion"]),
                names,
                join(self.out_dir, confusion_name(split)),
                title=f"{split}: macro-F1 {m['macro_f1']:.3f}, acc {m['accuracy']:.3f}",
            )
        fs.write_json(join(self.out_dir, METRICS), metrics)
        return RunOutput(counts=counts)


def va_metrics(va: np.ndarray) -> dict[str, Any]:
    """CCC of valence and arousal (and their mean) over the rows with a true value; (N, 4) input as predict_split's.

    Returns ``{"va_n": rows with both true values, "ccc_valence", "ccc_arousal", "ccc_mean"}`` (None when fewer than
    2 rows have labels).
    """
    from engine.metrics import ccc

    known = ~np.isnan(va[:, 2:]).any(axis=1)
    out: dict[str, Any] = {"va_n": int(known.sum())}
    if known.sum() < 2:
        return {**out, "ccc_valence": None, "ccc_arousal": None, "ccc_mean": None}
    cv, ca = ccc(va[known, 0], va[known, 2]), ccc(va[known, 1], va[known, 3])
    return {**out, "ccc_valence": cv, "ccc_arousal": ca, "ccc_mean": (cv + ca) / 2}
