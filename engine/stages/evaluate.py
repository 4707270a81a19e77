"""Evaluate stage: a checkpoint on the campaign's val and test splits (deduplicated against training)."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.config import EvalConfig
from engine.io import fs
from engine.labels import LabelSpace
from engine.layout import join
from engine.partition import PartitionRule
from engine.stages.base import RunOutput, Stage
from engine.stages.score import ShardRef, _manifest_cols, list_shards


def _predict_shard(
    item: dict[str, Any], *, checkpoint: str, rule: dict[str, Any], split: str, batch_size: int
) -> dict[str, Any]:
    import torch

    from engine.imaging import decode_pixels
    from engine.models.teacher import load_teacher
    from engine.samples import _read_members

    torch.set_num_threads(1)
    ref = ShardRef(**item)
    r = PartitionRule.from_json(rule)
    m = _manifest_cols(ref.manifest)
    mask = r.eval_mask(ref.source, split, m["key"], m["split"], m["label"], m["leak_with"])
    keys = [k for k, keep in zip(m["key"], mask, strict=True) if keep]
    labels = [lab for lab, keep in zip(m["label"], mask, strict=True) if keep]
    if not keys:
        return {"keys": [], "y": np.zeros(0, np.int64), "probs": np.zeros((0, 0), np.float32)}
    images = _read_members(ref.tar, set(keys))
    teacher = load_teacher([checkpoint])
    outs = [
        teacher.predict([decode_pixels(images[k]) for k in keys[i : i + batch_size]])
        for i in range(0, len(keys), batch_size)
    ]
    result = {"keys": keys, "y": np.asarray(labels, np.int64), "probs": np.concatenate([o.probs for o in outs])}
    if all(o.va is not None for o in outs):  # VA head: predicted and true valence/arousal, (N, 4)
        va = fs.read_parquet(ref.manifest, columns=["key", "valence", "arousal"])
        true = {k: (v, a) for k, v, a in zip(*(va[c].to_pylist() for c in ("key", "valence", "arousal")), strict=True)}
        t = np.array([[np.nan if x is None else x for x in true[k]] for k in keys], dtype=np.float32)
        result["va"] = np.concatenate([np.concatenate([o.va for o in outs if o.va is not None]), t], axis=1)
    return result


def predict_split(
    root: str, rule: PartitionRule, checkpoint: str, split: str, batch_size: int = 512
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """(keys, true labels, probabilities, va) of every evaluated row of ``split``, ordered by key.

    ``va`` is None unless the checkpoint has a VA head; then it is (N, 4): predicted valence, arousal, then the
    manifest's valence, arousal (NaN where unknown).
    """
    import ray

    shards = list_shards(root, rule.eval_sources)
    items = [ref.__dict__ for ref in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    keys: list[str] = []
    ys, ps, vas = [], [], []
    for out in ds.map(
        _predict_shard,
        fn_kwargs={"checkpoint": checkpoint, "rule": rule.to_json(), "split": split, "batch_size": batch_size},
    ).iter_rows():
        if len(out["keys"]):
            keys += list(out["keys"])
            ys.append(np.asarray(out["y"]))
            ps.append(np.asarray(out["probs"]))
            vas.append(np.asarray(out["va"]) if out.get("va") is not None else None)
    if not keys:
        return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32), None
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    known = [v for v in vas if v is not None]
    va = np.concatenate(known)[order] if len(known) == len(vas) else None
    return [keys[i] for i in order], np.concatenate(ys)[order], np.concatenate(ps)[order], va


class EvaluateStage(Stage):
    """Macro-F1, accuracy, per-class F1, ABAW2021 score and confusion matrix per split → ``eval/metrics.json``."""

    name = "evaluate"
    VERSION = 1

    def __init__(
        self,
        out_dir: str,
        root: str,
        cfg: EvalConfig,
        space: LabelSpace,
        *,
        checkpoint: str,
        checkpoint_fp: str,
        rule: PartitionRule,
        upstream: dict[str, str],
        on_existing: str = "error",
        label: str = "evaluate",
    ) -> None:
        super().__init__(out_dir, on_existing=on_existing, label=label)
        self.root, self.cfg, self.space, self.checkpoint = root, cfg, space, checkpoint
        self.checkpoint_fp, self.rule, self.upstream = checkpoint_fp, rule, upstream

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {"splits": self.cfg.splits, "checkpoint": self.checkpoint_fp, "upstream": self.upstream}

    def run(self) -> RunOutput:
        from engine.metrics import classification_metrics
        from engine.plots import confusion_png

        names = list(self.space.classes)
        metrics: dict[str, Any] = {"checkpoint": self.checkpoint, "checkpoint_fingerprint": self.checkpoint_fp}
        counts: dict[str, Any] = {}
        for split in self.cfg.splits:
            keys, y, probs, va = predict_split(self.root, self.rule, self.checkpoint, split, self.cfg.batch_size)
            if not keys:
                continue
            m = classification_metrics(y, probs.argmax(1), names, probs=probs)
            if va is not None:
                m.update(va_metrics(va))
                counts[f"{split}_ccc_mean"] = m.get("ccc_mean")
            metrics[split] = m
            counts[f"{split}_n"] = int(m["n"])
            counts[f"{split}_macro_f1"] = round(float(m["macro_f1"]), 4)
            counts[f"{split}_accuracy"] = round(float(m["accuracy"]), 4)
            confusion_png(
                np.asarray(m["confusion"]),
                names,
                join(self.out_dir, f"confusion_{split}.png"),
                title=f"{split}: macro-F1 {m['macro_f1']:.3f}, acc {m['accuracy']:.3f}",
            )
        fs.write_json(join(self.out_dir, "metrics.json"), metrics)
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
