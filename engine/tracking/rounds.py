"""What a finished round puts in its MLflow child run, from its committed files: metrics (engine.tracking.names),
artifacts, the labelled set and the selection as dataset inputs, and its student as a registered model version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.io import fs
from engine.tracking.names import round_metrics
from engine.tracking.tracker import Tracker


@dataclass(frozen=True)
class DatasetRef:
    """A committed parquet file logged as a run input: its path, MLflow name, digest (the committing stage's
    fingerprint) and role (``training``, ``pseudo_labels``)."""

    path: str
    name: str
    digest: str
    context: str


def log_round(
    tracker: Tracker,
    run_id: str,
    doc: Mapping[str, Any],
    *,
    artifacts: Sequence[str],
    datasets: Sequence[DatasetRef],
) -> None:
    """Metrics of the round document ``doc`` at step ``doc["round"]``, the files of ``artifacts`` that exist, and
    ``datasets`` as inputs (each with its parquet schema as columns)."""
    import pyarrow.parquet as pq

    tracker.log_metrics(run_id, round_metrics(doc), step=int(doc["round"]))
    for path in artifacts:
        if fs.exists(path):
            tracker.log_artifact(run_id, path)
    for d in datasets:
        filesystem, local = fs.resolve(d.path)
        schema = pq.read_schema(local, filesystem=filesystem)
        tracker.log_dataset(run_id, d.path, name=d.name, digest=d.digest, context=d.context, schema=schema)


def log_student(
    tracker: Tracker, run_id: str, doc: Mapping[str, Any], *, checkpoint: str, example: bytes, model_name: str
) -> dict[str, str]:
    """The round's student (``checkpoint``) as the run's MLflow model and a version of the registered model
    ``model_name`` (the campaign's); ``example`` (one encoded face) is its input example. Round 0 with an ensemble
    teacher (``campaign.teacher_members``) logs member 0, tagged ``ensemble_member``. Returns the record
    ``round.json`` keeps (``uri``, ``registered_model``, ``version``)."""
    student = doc["student"]
    uri = tracker.log_checkpoint_model(
        run_id,
        checkpoint,
        example=example,
        metadata={"round": doc["round"], "campaign": doc["campaign"], "fingerprint": student["fingerprint"]},
    )
    tags = {"round": doc["round"], "val_macro_f1": doc["metrics"].get("val/macro_f1")}
    if student.get("members"):  # round 0's ensemble teacher: the model is member 0, the metrics the ensemble's
        tags["ensemble_member"] = f"0 of {len(student['members'])}"
    version = tracker.register_model(model_name, uri, run_id, tags=tags)
    return {"uri": uri, "registered_model": model_name, "version": version}
