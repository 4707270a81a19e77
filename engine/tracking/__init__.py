"""MLflow adapter, the only package that imports mlflow: one parent run per campaign, one child run per round,
resumable by stored run ids; each round's student as an MLflow model (:mod:`.pyfunc_model`) registered under the
campaign's name, the promoted one aliased ``champion``; the labelled set and the selection as run inputs.

By subject: :mod:`.names` (every tag, model and metric name), :mod:`.store` (the embedded sqlite store, created once
under a lock, and its relocation), :mod:`.runs` (runs, params, metrics, artifacts), :mod:`.models` (logged models,
the registry), :mod:`.datasets` (run inputs), :mod:`.tracker` (the :class:`Tracker` that holds them together) and
:mod:`.rounds` (what a finished round logs). Everything goes through ``MlflowClient`` with explicit run ids, so there
is no global active-run state and any caller can log to any run (logging a model is the one call MLflow ties to an
active run: :meth:`Tracker.log_checkpoint_model` opens it and puts the global state back).
"""

from __future__ import annotations

import os

# MLflow 3 sends usage telemetry from a background thread; the engine runs on air-gapped clusters and forks worker
# processes, so it stays off unless the environment says otherwise (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from engine.tracking.names import (
    ARTIFACTS_DIR,
    CAMPAIGN_BEST_VAL,
    CHAMPION,
    DB_NAME,
    EPOCH_PRESENCE_KEY,
    EXPERIMENT_KIND,
    MODEL_NAME,
    TAG_CAMPAIGN,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_ROUND,
    epoch_metrics,
    round_metrics,
)
from engine.tracking.runs import MAX_PARAM_VALUE_CHARS, RunRecord, global_uris, log_run_metrics, run_metric_steps
from engine.tracking.store import default_artifact_root, default_uri, relocate_embedded_store
from engine.tracking.tracker import Tracker, tracker_for

__all__ = [
    "ARTIFACTS_DIR",
    "CAMPAIGN_BEST_VAL",
    "CHAMPION",
    "DB_NAME",
    "EPOCH_PRESENCE_KEY",
    "EXPERIMENT_KIND",
    "MAX_PARAM_VALUE_CHARS",
    "MODEL_NAME",
    "TAG_CAMPAIGN",
    "TAG_EXPERIMENT_KIND",
    "TAG_KIND",
    "TAG_ROUND",
    "RunRecord",
    "Tracker",
    "default_artifact_root",
    "default_uri",
    "epoch_metrics",
    "global_uris",
    "log_run_metrics",
    "relocate_embedded_store",
    "round_metrics",
    "run_metric_steps",
    "tracker_for",
]
