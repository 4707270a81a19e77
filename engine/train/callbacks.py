"""Ray Train callbacks run by the training controller (on the driver's node), not by the workers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import ray.train

from engine.labels import LabelSpace


class MlflowEpochs(ray.train.UserCallback):  # type: ignore[misc]
    """Log each epoch's record (reported by rank 0 through ``ray.train.report``) to the round's MLflow run.

    The controller calls this after its checkpoint manager has registered the epoch's checkpoint, so an epoch is
    logged only once it is part of the run: a run killed before that trains and logs the epoch again exactly once,
    and a run killed between the two gets the epoch from ``backfill_mlflow`` when it resumes.
    """

    def __init__(self, tracking: Mapping[str, str], label_space: LabelSpace) -> None:
        self.tracking = dict(tracking)
        self.label_space = label_space

    def after_report(self, run_context: Any, metrics: Sequence[dict[str, Any]], checkpoint: Any) -> None:
        from engine.train.loop import log_epoch_to_mlflow

        if not metrics or "epoch" not in metrics[0]:
            return
        record = dict(metrics[0])
        record["thresholds"] = json.loads(record.pop("thresholds_json", "null"))
        log_epoch_to_mlflow(self.tracking, record, self.label_space)
