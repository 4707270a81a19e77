"""The one tracker a driver holds: runs (:mod:`.runs`), models and the registry (:mod:`.models`) and dataset inputs
(:mod:`.datasets`) on one MLflow store and experiment."""

from __future__ import annotations

from engine.tracking.datasets import DatasetInputs
from engine.tracking.models import ModelRegistry
from engine.tracking.runs import RunLogger


class Tracker(ModelRegistry, DatasetInputs, RunLogger):
    """MLflow campaign/round runs, each round's student as a registered model, datasets as run inputs.

    Args:
        uri: tracking URI (``sqlite:////abs/mlflow.db``, ``http://host:5000``, …); see
            :func:`engine.tracking.store.default_uri`.
        experiment: experiment name; created on first use with ``artifact_location = artifact_root``.
        artifact_root: where run artifacts go; a local folder under the storage root for the embedded store.
    """


def tracker_for(storage_root: str, uri: str | None, experiment: str) -> Tracker:
    """The tracker of a storage root: ``uri`` when set (a tracking server), else the root's embedded store."""
    from engine.tracking.store import default_artifact_root, default_uri

    return Tracker(uri or default_uri(storage_root), experiment, default_artifact_root(storage_root))
