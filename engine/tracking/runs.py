"""MLflow runs through one ``MlflowClient`` with explicit run ids: the campaign's parent run and each round's child
run (resumable by stored ids), params, metrics, tags, artifacts, and reading them back; also the two calls a Ray
Train worker makes without a tracker."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import MissingExtra
from engine.io import fs
from engine.tracking.names import PARENT_TAG, TAG_CAMPAIGN, TAG_KIND, TAG_ROUND
from engine.tracking.store import local_path as _local_path
from engine.tracking.store import open_store

log = logging.getLogger(__name__)

MAX_PARAM_VALUE_CHARS = 500
"""Older MLflow servers cap param values at 500 chars (newer at 6000): stay under the lowest."""
MAX_PARAM_KEY_CHARS = 250
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000


@dataclass(frozen=True)
class RunRecord:
    """What the engine needs to know about one MLflow run (kept free of mlflow types)."""

    run_id: str
    run_name: str
    status: str
    """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
    parent_id: str | None
    round_index: int | None
    """Value of the ``engine.round`` tag on round runs, else None."""
    start_time_ms: int | None
    end_time_ms: int | None
    tags: Mapping[str, str]


class RunLogger:
    """MLflow campaign/round runs on one tracking store and experiment (the run part of :class:`Tracker`).

    Args:
        uri: tracking URI (``sqlite:////abs/mlflow.db``, ``http://host:5000``, …); see
            :func:`engine.tracking.store.default_uri`.
        experiment: experiment name; created on first use with ``artifact_location = artifact_root``.
        artifact_root: where run artifacts go (``<artifact_root>/<run_id>/artifacts``); a local folder under the
            storage root for the embedded store. Ignored (with a warning) when the experiment already exists
            with another location.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
            raise MissingExtra("engine.tracking needs mlflow: pip install 'mlflow>=2.15,<4'") from exc
        self.uri = uri
        self.experiment_name = experiment
        self._client, self.experiment_id = open_store(uri, experiment, artifact_root)

    # -- runs -------------------------------------------------------------------------------------------------------

    def ensure_campaign_run(
        self,
        name: str,
        run_id: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Id of the campaign's parent run: a new run when ``run_id`` is None, else the stored one, reopened.

        A reopened run is set back to RUNNING (close it with :meth:`set_terminated`). When the stored id is not in
        this store (another tracking URI, a deleted run) a new run is created with a warning: store the returned id.

        Args:
            name: campaign name (run name and ``engine.campaign`` tag).
            run_id: id stored in campaign.json by an earlier attempt, or None.
            params: logged through :meth:`log_params` (truncated, unchanged values skipped).
            tags: extra tags (e.g. ``{"engine.fingerprint": …}``).
        """
        all_tags = {TAG_KIND: "campaign", TAG_CAMPAIGN: name, **(tags or {})}
        rid = self._reuse(run_id, expected_parent=None) if run_id else None
        if rid is None:
            rid = self._create(name, all_tags)
            log.info("MLflow: campaign %s -> new parent run %s (experiment %s)", name, rid, self.experiment_name)
        else:
            self._set_tags(rid, all_tags)
            log.info("MLflow: campaign %s -> resumed parent run %s", name, rid)
        if params:
            self.log_params(rid, params)
        return rid

    def ensure_round_run(
        self,
        parent_id: str,
        round_index: int,
        run_id: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Id of round ``round_index``'s child run under ``parent_id``: new when ``run_id`` is None, else reopened.

        The child is named ``r<round:03d>`` and tagged ``mlflow.parentRunId`` (MLflow's nesting) and
        ``engine.round``. A stored id that is missing or belongs to another parent gives a new run with a warning.
        """
        all_tags = {
            TAG_KIND: "round",
            TAG_ROUND: str(round_index),
            PARENT_TAG: parent_id,
            **(tags or {}),
        }
        rid = self._reuse(run_id, expected_parent=parent_id) if run_id else None
        if rid is None:
            rid = self._create(f"r{round_index:03d}", all_tags)
            log.info("MLflow: round %d -> new child run %s of %s", round_index, rid, parent_id)
        else:
            self._set_tags(rid, all_tags)
            log.info("MLflow: round %d -> resumed child run %s", round_index, rid)
        if params:
            self.log_params(rid, params)
        return rid

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run with ``status`` (FINISHED, FAILED or KILLED) and the current end time."""
        self._client.set_terminated(run_id, status)

    # -- logging ----------------------------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
        """Log metrics at ``step`` (0 when None) without touching the run's status.

        Keys follow ``<stage>/<metric>[/<class>]``. ``None`` values are skipped; everything else goes through
        ``float``. Logging the same key at a new step extends its history.
        """
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(str(k), float(v), now_ms, int(step or 0)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), _BATCH_METRICS):
            self._client.log_batch(run_id, metrics=batch[i : i + _BATCH_METRICS])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params as strings cut to 500 chars; skip those already logged with the same value.

        MLflow refuses to change a logged param: such a key is left as it was and a warning names it (a changed
        config between attempts shows up in the fingerprint; the tracker is only a view of the files).
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        existing = self._client.get_run(run_id).data.params
        new: list[Param] = []
        changed: list[str] = []
        for key, value in params.items():
            k, v = _param_key(key), _param_value(value)
            if k not in existing:
                new.append(Param(k, v))
            elif existing[k] != v:
                changed.append(f"{k}: {existing[k]!r} -> {v!r}")
        if changed:
            log.warning(
                "MLflow run %s keeps its first value for %d param(s) (MLflow cannot change a logged param): %s",
                run_id,
                len(changed),
                "; ".join(changed[:5]) + (" …" if len(changed) > 5 else ""),
            )
        for i in range(0, len(new), _BATCH_PARAMS):
            try:
                self._client.log_batch(run_id, params=new[i : i + _BATCH_PARAMS])
            except MlflowException as exc:  # a concurrent writer logged one of them first
                log.warning("MLflow run %s: some params were not logged: %s", run_id, exc)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on a run; values are stringified."""
        self._set_tags(run_id, {str(k): str(v) for k, v in tags.items()})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file, or the contents of a directory, into the run's artifacts under ``artifact_path``.

        A file keeps its base name (``<artifact_path>/<name>``); a directory's files keep their relative paths
        (``<artifact_path>/<relpath>``). ``local_path`` may also be a storage URI of one file
        (``s3://…/metrics.json``): it is fetched to a temporary folder first.
        """
        local = _local_path(local_path)
        if local is not None:
            if os.path.isdir(local):
                self._client.log_artifacts(run_id, local, artifact_path)
            else:
                self._client.log_artifact(run_id, local, artifact_path)
            return
        with tempfile.TemporaryDirectory(prefix="engine-artifact-") as tmp:
            copy = os.path.join(tmp, local_path.rstrip("/").rsplit("/", 1)[-1])
            with open(copy, "wb") as f:
                f.write(fs.read_bytes(local_path))
            self._client.log_artifact(run_id, copy, artifact_path)

    # -- reading ----------------------------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        """The run's record; raises ``mlflow.exceptions.MlflowException`` when the id is unknown."""
        return _record(self._client.get_run(run_id))

    def children(self, parent_id: str) -> list[RunRecord]:
        """Child runs of ``parent_id`` (not deleted), ordered by round index then start time."""
        runs = self._client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10_000
        )
        records = [_record(r) for r in runs]
        return sorted(records, key=lambda r: (r.round_index is None, r.round_index or 0, r.start_time_ms or 0))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), …]`` of one metric, ordered by step then time."""
        hist = self._client.get_metric_history(run_id, key)
        return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]

    def params(self, run_id: str) -> dict[str, str]:
        """The run's logged params."""
        return dict(self._client.get_run(run_id).data.params)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Artifact paths directly under ``path`` (relative to the run's artifact root), sorted."""
        return sorted(a.path for a in self._client.list_artifacts(run_id, path))

    # -- internals --------------------------------------------------------------------------------------------------

    def _create(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        return str(run.info.run_id)

    def _reuse(self, run_id: str, *, expected_parent: str | None) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s is not in %s; starting a new run (store the new id)", run_id, self.uri)
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s was deleted; starting a new run (store the new id)", run_id)
            return None
        parent = run.data.tags.get(PARENT_TAG)
        if parent != expected_parent:
            log.warning(
                "MLflow run %s has parent %s, expected %s; starting a new run (store the new id)",
                run_id,
                parent,
                expected_parent,
            )
            return None
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        return run_id

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


@contextlib.contextmanager
def global_uris(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``uri`` for the ``with`` body, then put back exactly as they
    were (unset stays unset, and so do the ``MLFLOW_*_URI`` variables MLflow exports for subprocesses): logging a
    model and registering or loading ``models:/`` URIs go through them, not through a client."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    explicit = getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None)
    with _env_restored("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            # None puts a URI back to unset (resolved from the environment or the default), as it was
            mlflow.set_tracking_uri(explicit[0])  # type: ignore[arg-type]
            mlflow.set_registry_uri(explicit[1])  # type: ignore[arg-type]


@contextlib.contextmanager
def _env_restored(*names: str, **values: str) -> Iterator[None]:
    """The environment variables ``names`` and ``values``'s keys put back exactly as they were after the ``with``
    body (unset stays unset), ``values`` set for it."""
    before = {k: os.environ.get(k) for k in (*names, *values)}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_run_metrics(uri: str, run_id: str, metrics: Mapping[str, float | int | None], step: int) -> None:
    """Log ``metrics`` at ``step`` of an existing run, without a :class:`Tracker` (no experiment lookup): what a Ray
    Train worker calls once per epoch. ``None`` and non-finite values are skipped."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now_ms = int(time.time() * 1000)
    batch = [
        Metric(str(k), float(v), now_ms, int(step)) for k, v in metrics.items() if v is not None and math.isfinite(v)
    ]
    MlflowClient(tracking_uri=uri).log_batch(run_id, metrics=batch)


def run_metric_steps(uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which the run ``run_id`` has a value of ``key``."""
    from mlflow.tracking import MlflowClient

    return {m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)}


def _record(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    round_tag = tags.get(TAG_ROUND)
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        parent_id=tags.get(PARENT_TAG),
        round_index=int(round_tag) if round_tag is not None and round_tag.lstrip("-").isdigit() else None,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        tags=tags,
    )


def _param_key(key: Any) -> str:
    k = str(key)
    return k if len(k) <= MAX_PARAM_KEY_CHARS else k[: MAX_PARAM_KEY_CHARS - 9] + "_" + _digest(k)


def _param_value(value: Any) -> str:
    v = str(value)
    if len(v) <= MAX_PARAM_VALUE_CHARS:
        return v
    # Keep a digest of the full value so two long values that share a prefix still differ.
    return v[: MAX_PARAM_VALUE_CHARS - 12] + "…[" + _digest(v) + "]"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
