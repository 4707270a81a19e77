"""Every name the engine gives things in MLflow: store files, tags, the model and alias names, and every metric key
(``<stage>/<metric>[/<class>]``), built here from the engine's own records so no other module spells one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
"""MLflow's nesting tag: a round run's campaign run."""
TAG_KIND = "engine.kind"
TAG_CAMPAIGN = "engine.campaign"
TAG_ROUND = "engine.round"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its runs table (untagged ones open on the GenAI traces view)."""
MODEL_NAME = "student"
"""The name of each round's logged model in its run."""
CHAMPION = "champion"
"""The registry alias of the campaign's current teacher."""

CAMPAIGN_BEST_VAL = "campaign/best_val_macro_f1"
"""The campaign run's metric: the val macro-F1 of its teacher, at the step of its last round."""
EPOCH_PRESENCE_KEY = "train/lr"
"""The epoch metric every epoch record has: a step that has it was logged (engine.train.trainer backfills the rest)."""
EPOCH_KEYS = ("train_loss", "loss_s", "loss_u", "lr", "images_per_s", "mask_rate", "val_macro_f1", "val_accuracy")
"""The per-epoch record's keys logged as ``train/<key>``."""


def epoch_metrics(record: Mapping[str, Any], classes: Iterable[str]) -> dict[str, Any]:
    """One training epoch's metrics: ``train/<key>`` for :data:`EPOCH_KEYS` and the online branch's per-class
    thresholds as ``train/tau/<class>`` (values may be None or infinite: the logger skips those)."""
    values = {f"train/{k}": record.get(k) for k in EPOCH_KEYS}
    for name, tau in zip(classes, record.get("thresholds") or [], strict=False):
        values[f"train/tau/{name}"] = tau
    return values


def round_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    """A finished round's metrics from its ``round.json`` document: the evaluation (``val/macro_f1`` ...), from round 1
    the per-class thresholds (``threshold/tau/<class>``), the selection (``select/selected[/<class>]``,
    ``select/mask_rate``, ``select/precision[/<class>]`` where the pool's labels are known) and the kept epoch
    (``train/best_epoch``, ``train/best_val_macro_f1``) and, for a round people reviewed, its batch (``review/faces``,
    ``review/asked/<class>``, ``review/labelled[/<class>]``, ``review/agreement``)."""
    metrics = {k: float(v) for k, v in doc["metrics"].items()}
    if "thresholds" in doc:
        for c, t in doc["thresholds"].items():
            if t is not None:
                metrics[f"threshold/tau/{c}"] = float(t)
        q = doc["quality"]
        metrics["select/selected"] = float(q["selected"])
        metrics["select/mask_rate"] = float(q["mask_rate"])
        if q.get("precision") is not None:
            metrics["select/precision"] = float(q["precision"])
        for c, v in q["per_class"].items():
            metrics[f"select/selected/{c}"] = float(v["selected"])
            if v.get("precision") is not None:
                metrics[f"select/precision/{c}"] = float(v["precision"])
    review = doc.get("review")
    if review:  # the batch people were asked about, and what they answered
        a = review["answers"]
        metrics["review/faces"] = float(review["faces"])
        metrics["review/labelled"] = float(a["labelled"])
        if a.get("agreement") is not None:
            metrics["review/agreement"] = float(a["agreement"])
        for c, n in review["per_class"].items():
            metrics[f"review/asked/{c}"] = float(n)
        for c, n in a["per_class"].items():
            metrics[f"review/labelled/{c}"] = float(n)
    train_counts = doc["stages"].get("train", {}).get("counts", {})
    for k in ("best_epoch", "best_val_macro_f1"):
        if train_counts.get(k) is not None:
            metrics[f"train/{k}"] = float(train_counts[k])
    return metrics
