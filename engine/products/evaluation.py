"""Evaluate any checkpoint on any ingested labelled source, on the classes its label space shares with the data's."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

from engine.config import Config
from engine.errors import ConfigError
from engine.io import fs
from engine.labels import LabelSpace, get_label_space
from engine.layout import SourceLayout

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")


def shared_classes(
    model_space: LabelSpace, data_space: LabelSpace
) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The classes both spaces hold, by canonical name, in the data space's order.

    Returns:
        ``(names, model_columns, label_map)``: the S shared class names; (S,) the model's output column of each;
        (len(data_space),) the shared index of each data label, -1 for a data class the model lacks.
    """
    names = [c for c in data_space.classes if c in model_space.classes]
    model_columns = np.array([model_space.classes.index(c) for c in names], dtype=np.int64)
    label_map = np.array([names.index(c) if c in names else -1 for c in data_space.classes], dtype=np.int64)
    return names, model_columns, label_map


def evaluate_checkpoint(
    cfg: Config, checkpoint: str, source: str, *, split: str = "test", batch_size: int | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 of ``checkpoint`` on one split of ``source``, ingesting it if needed.

    Rows are the split's labelled manifest rows minus those the ingest leakage guard flagged as twins of a row of
    a split used before this one (train/unlabelled for val; train/unlabelled/val for test), as in the evaluate
    stage. Only the classes both label spaces hold count: rows of other classes are dropped, and the model's
    probabilities are restricted to the shared classes and renormalised before the argmax.

    Args:
        cfg: the config holding ``sources.<source>``, ``storage.root`` and ``ingest``.
        split: ``val`` or ``test``.
        batch_size: images per model call (default ``eval.batch_size``).

    Returns:
        ``classification_metrics`` over the shared classes (``n``, ``accuracy``, ``macro_f1``, ``per_class``,
        ``confusion``, ``ece``...) plus ``checkpoint``, ``checkpoint_fingerprint``, ``model_label_space``,
        ``source``, ``data_label_space``, ``split``, ``labelled_rows`` (labelled rows of the split),
        ``excluded_leakage`` and ``excluded_unshared`` (rows dropped for each reason).

    Raises:
        ConfigError: unknown source or split, no shared class, or no row left to evaluate.
    """
    from engine.metrics import classification_metrics
    from engine.models.checkpoint import read_checkpoint_meta
    from engine.partition_rule import PartitionRule
    from engine.stages.evaluate import predict_split
    from engine.stages.ingest import run_ingest

    if split not in EVAL_SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    src = cfg.source(source)
    root = cfg.storage.root
    run_ingest(cfg, source)
    meta = read_checkpoint_meta(checkpoint)
    model_space = get_label_space(str(meta["label_space"]["name"]))
    data_space = get_label_space(src.label_space)
    names, columns, label_map = shared_classes(model_space, data_space)
    if not names:
        raise ConfigError(
            f"checkpoint {checkpoint} predicts {model_space.name} {list(model_space.classes)}, which shares no "
            f"class with source {source!r} ({data_space.name}); evaluate it on a source with a compatible label space"
        )
    manifest = fs.read_parquet(SourceLayout(root, source).manifest_dir, columns=["split", "label"])
    labelled_rows = int(
        pc.sum(pc.and_(pc.equal(manifest["split"], split), pc.greater_equal(manifest["label"], 0))).as_py() or 0
    )
    rule = PartitionRule(0, (), (source,), 1.0, 1.0, "")
    ev = cfg.eval
    pred = predict_split(
        root, rule, checkpoint, split, batch_size or ev.batch_size, ev.tta_flip, in_process_rows=ev.in_process_rows
    )
    keys, y, probs = pred.keys, pred.y, pred.probs
    y_shared = label_map[y] if len(keys) else np.zeros(0, np.int64)
    keep = y_shared >= 0
    if not keep.any():
        raise ConfigError(
            f"source {source!r} has no labelled {split} row of the shared classes {names} left after the leakage "
            f"guard ({labelled_rows} labelled rows); check sources.{source} and its split"
        )
    p = probs[keep][:, columns].astype(np.float64)
    p /= np.clip(p.sum(1, keepdims=True), 1e-12, None)
    metrics = classification_metrics(y_shared[keep], p.argmax(1), names, probs=p)
    log.info("evaluate %s on %s/%s: n=%d, accuracy %.4f", checkpoint, source, split, metrics["n"], metrics["accuracy"])
    return {
        "checkpoint": checkpoint,
        "checkpoint_fingerprint": str(meta["fingerprint"]),
        "model_label_space": model_space.name,
        "source": source,
        "data_label_space": data_space.name,
        "split": split,
        "labelled_rows": labelled_rows,
        "excluded_leakage": labelled_rows - len(keys),
        "excluded_unshared": int((~keep).sum()),
        **metrics,
    }
