"""MLflow adapter: one parent run per campaign, one child run per round, resumable by stored run ids; each round's
student as an MLflow model (:mod:`.pyfunc_model`) registered under the campaign's name, the promoted one aliased
``champion``; the labelled set and the selection as run inputs.

The only package that imports mlflow. Everything goes through ``MlflowClient`` with explicit run ids, so there is no
global active-run state and any caller (driver, stage, report) can log to any run (logging a model is the one call
MLflow ties to an active run: :meth:`Tracker.log_checkpoint_model` opens it and puts the global state back).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import MissingExtra
from engine.io import fs
from engine.io.lock import waiting_lock

log = logging.getLogger(__name__)

# MLflow 3 sends usage telemetry from a background thread; the engine runs on air-gapped clusters and forks worker
# processes, so it stays off unless the environment says otherwise (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_VALUE_CHARS = 500
"""Older MLflow servers cap param values at 500 chars (newer at 6000): stay under the lowest."""
MAX_PARAM_KEY_CHARS = 250
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000
_PARENT_TAG = "mlflow.parentRunId"
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
_QUIET_LOGGERS = (
    "alembic",
    "alembic.runtime.migration",
    "sqlalchemy",
    "mlflow.store.db.utils",
    "mlflow.store.db",
    "mlflow.pyfunc",
    "mlflow.models.model",
)


def default_uri(storage_root: str) -> str:
    """Embedded tracking URI for a storage root: ``sqlite:////<abs root>/mlflow.db`` (4 slashes = absolute path).

    A sqlite store cannot live on an object store: for a remote root (``s3://…``) this returns the working
    directory's ``sqlite:///./mlflow.db`` and logs a warning to set ``tracking.uri`` to a server.
    """
    local = _local_path(storage_root)
    if local is not None:
        return f"sqlite:///{local}/{DB_NAME}"
    log.warning(
        "storage root %s is not local, so the MLflow sqlite store goes to ./%s in the working directory; "
        "set tracking.uri (e.g. --set tracking.uri=http://<mlflow-server>:5000) to keep runs with the campaign",
        storage_root,
        DB_NAME,
    )
    return f"sqlite:///./{DB_NAME}"


def default_artifact_root(storage_root: str) -> str:
    """Artifact location for the experiment: ``<root>/mlartifacts`` (absolute path for a local root)."""
    local = _local_path(storage_root)
    if local is not None:
        return os.path.join(local, ARTIFACTS_DIR)
    return f"{storage_root.rstrip('/')}/{ARTIFACTS_DIR}"


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


class Tracker:
    """MLflow campaign/round runs on one tracking store and experiment.

    Args:
        uri: tracking URI (``sqlite:////abs/mlflow.db``, ``http://host:5000``, …); see :func:`default_uri`.
        experiment: experiment name; created on first use with ``artifact_location = artifact_root``.
        artifact_root: where run artifacts go (``<artifact_root>/<run_id>/artifacts``); a local folder under the
            storage root for the embedded store. Ignored (with a warning) when the experiment already exists
            with another location.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
            raise MissingExtra("engine.tracking needs mlflow: pip install 'mlflow>=2.15,<4'") from exc
        _quiet_migrations()
        self.uri = uri
        self.experiment_name = experiment
        if not uri.startswith("sqlite:///"):
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            self.experiment_id = self._ensure_experiment(experiment, artifact_root)
            return
        db_path = uri[len("sqlite:///") :]
        parent = os.path.dirname(db_path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # One process at a time creates, migrates or relocates the embedded store: two drivers creating it together
        # fail in alembic's migration ("expected to match one row"). Later processes wait a moment here.
        with waiting_lock(db_path):
            relocate_embedded_store(db_path, experiment, artifact_root)
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            self.experiment_id = self._ensure_experiment(experiment, artifact_root)

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
            _PARENT_TAG: parent_id,
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

    # -- models and datasets ----------------------------------------------------------------------------------------

    def log_checkpoint_model(
        self, run_id: str, checkpoint: str, *, example: bytes, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Log the engine checkpoint ``checkpoint`` as the run's MLflow model ``student`` and return its model URI
        (``models:/<model id>``); a run that already has one keeps it (a resumed round logs nothing twice).

        The model is :mod:`engine.tracking.pyfunc_model` (code, not a pickle) with the checkpoint as its artifact, a
        signature (binary ``image`` in; one float per class and ``label`` out) and ``example`` (one encoded image)
        as its input example.
        """
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        from engine.tracking import pyfunc_model

        existing = self._logged_model(run_id)
        if existing is not None:
            return existing
        local = _local_path(checkpoint)
        with tempfile.TemporaryDirectory(prefix="engine-model-") as tmp:
            if local is None:
                local = os.path.join(tmp, "checkpoint.pt")
                with open(local, "wb") as f:
                    f.write(fs.read_bytes(checkpoint))
            example_df = pd.DataFrame({pyfunc_model.IMAGE_COLUMN: [example]})
            model = pyfunc_model.CheckpointModel()
            model.load_context(_Context({pyfunc_model.CHECKPOINT_ARTIFACT: local}))
            signature = infer_signature(example_df, model.predict(None, example_df))
            # the example check "downloads" the model: no progress bar for that
            quiet = _env_restored(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
            try:
                with quiet, global_uris(self.uri), mlflow.start_run(run_id=run_id):
                    info = mlflow.pyfunc.log_model(
                        name=MODEL_NAME,
                        python_model=pyfunc_model.__file__,
                        artifacts={pyfunc_model.CHECKPOINT_ARTIFACT: local},
                        signature=signature,
                        input_example=example_df,
                        pip_requirements=_requirements(),
                        metadata=dict(metadata or {}),
                    )
            finally:
                self._client.update_run(run_id, status="RUNNING")  # the campaign closes the round's run
        log.info("MLflow: round run %s -> model %s", run_id, info.model_uri)
        return str(info.model_uri)

    def register_model(self, name: str, model_uri: str, run_id: str, tags: Mapping[str, Any] | None = None) -> str:
        """The registry version of ``model_uri`` under ``name`` (created with its registered model when missing);
        registering the same run's model again returns its existing version."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name, description="Students of the fer-engine campaign " + name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        existing = self.model_version(name, run_id)
        if existing is not None:
            return existing
        model_id = model_uri.removeprefix("models:/")
        with global_uris(self.uri):  # the registry looks the logged model up in the global tracking store
            mv = self._client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags={str(k): str(v) for k, v in (tags or {}).items()},
                model_id=model_id,
            )
        log.info("MLflow: registered %s version %s (run %s)", name, mv.version, run_id)
        return str(mv.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point the registry alias ``alias`` of ``name`` at ``version`` (moving it from any other version)."""
        self._client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version the alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def model_version(self, name: str, run_id: str) -> str | None:
        """The registry version of the model run ``run_id`` logged, or None."""
        for mv in self._client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            return str(mv.version)
        return None

    def log_dataset(self, run_id: str, path: str, *, name: str, digest: str, context: str, schema: Any = None) -> None:
        """Record the parquet file ``path`` as an input of the run: an MLflow dataset ``name`` with ``digest`` (the
        fingerprint of the stage that committed it), its source pointing at the file and ``context`` (``training``,
        ``pseudo_labels`` …) as its role. ``schema`` is a pyarrow schema, shown as the dataset's columns."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types import ColSpec, Schema

        cols = None
        if schema is not None:
            typed = [(_mlflow_type(f.type), f.name) for f in schema]
            cols = Schema([ColSpec(t, n) for t, n in typed if t is not None])
        local = _local_path(path)
        with warnings.catch_warnings():  # a local path matches two equal LocalArtifactDatasetSource registrations
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(local or path)
        dataset = MetaDataset(source, name=name, digest=digest[:36], schema=cols)  # type: ignore[abstract]
        tag = InputTag("mlflow.data.context", context)
        self._client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[tag])])

    def run_inputs(self, run_id: str) -> list[tuple[str, str, str]]:
        """``(name, digest, context)`` of the run's dataset inputs."""
        run = self._client.get_run(run_id)
        out = []
        for d in run.inputs.dataset_inputs if run.inputs else []:
            context = next((t.value for t in d.tags if t.key == "mlflow.data.context"), "")
            out.append((d.dataset.name, d.dataset.digest, context))
        return sorted(out)

    def _logged_model(self, run_id: str) -> str | None:
        models = self._client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
        )
        return f"models:/{models[0].model_id}" if models else None

    # -- reading ----------------------------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        """The run's record; raises ``mlflow.exceptions.MlflowException`` when the id is unknown."""
        return _record(self._client.get_run(run_id))

    def children(self, parent_id: str) -> list[RunRecord]:
        """Child runs of ``parent_id`` (not deleted), ordered by round index then start time."""
        runs = self._client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{_PARENT_TAG}` = '{parent_id}'", max_results=10_000
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

    def _ensure_experiment(self, name: str, artifact_root: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            try:
                return str(
                    self._client.create_experiment(
                        name, artifact_location=artifact_root, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
                    )
                )
            except MlflowException:  # created by a concurrent process between the two calls
                exp = self._client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.tags.get(TAG_EXPERIMENT_KIND) is None:
            self._client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        if exp.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r was deleted; restoring it", name)
            self._client.restore_experiment(exp.experiment_id)
        if _norm_location(exp.artifact_location) != _norm_location(artifact_root):
            log.warning(
                "MLflow experiment %r keeps its artifact location %s (asked for %s); use another "
                "tracking.experiment name to store artifacts elsewhere",
                name,
                exp.artifact_location,
                artifact_root,
            )
        return str(exp.experiment_id)

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
        parent = run.data.tags.get(_PARENT_TAG)
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


@dataclass(frozen=True)
class _Context:
    """What ``PythonModel.load_context`` reads, for checking a model in process before logging it."""

    artifacts: dict[str, str]


def _requirements() -> list[str]:
    """The model's pip requirements, named rather than inferred (MLflow's inference re-imports the model in a new
    process). The engine itself is one of them: the model is its code."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("fer-engine", "torch", "timm", "numpy", "pandas", "pillow", "mlflow"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def _mlflow_type(t: Any) -> str | None:
    """The MLflow column type of a pyarrow type; None for types a schema cannot show (lists, structs)."""
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "long"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    return None


def _record(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    round_tag = tags.get(TAG_ROUND)
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        parent_id=tags.get(_PARENT_TAG),
        round_index=int(round_tag) if round_tag is not None and round_tag.lstrip("-").isdigit() else None,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        tags=tags,
    )


def _local_path(path: str) -> str | None:
    """Absolute local path for a plain path or ``file://`` URI; None for any other scheme (no network call)."""
    if path.startswith("file://"):
        return os.path.abspath(path[len("file://") :])
    if "://" in path:
        return None
    return os.path.abspath(path)


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
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


_PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
    ("datasets", "dataset_source"),
)
"""The columns of MLflow's sqlite schema that hold paths of the artifact store (and of logged datasets)."""


def relocate_embedded_store(db_path: str, experiment: str, artifact_root: str) -> int:
    """Re-point a storage root's embedded MLflow store after the root was copied or moved; returns how many values
    changed.

    MLflow stores absolute paths (the experiment's artifact location, each run's artifact URI, logged models, model
    versions, dataset sources) and has no API to change them, so a copied root would go on writing artifacts into
    the original. When ``db_path`` and ``artifact_root`` lie in one folder (the embedded store: ``<root>/mlflow.db``
    and ``<root>/mlartifacts``) and the experiment's artifact location is ``<old root>/mlartifacts`` elsewhere, every
    ``<old root>/`` in the columns above becomes ``<root>/``. A store that is not embedded is left alone.
    """
    import sqlite3

    root = os.path.dirname(os.path.abspath(db_path))
    if not os.path.isfile(db_path) or os.path.dirname(_norm_location(artifact_root)) != root:
        return 0
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        row = conn.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
        location = _norm_location(str(row[0])) if row else ""
        old = os.path.dirname(location)
        if os.path.basename(location) != ARTIFACTS_DIR or not old or old == root:
            return 0
        changed = 0
        for table, column in _PATH_COLUMNS:
            if table not in tables or column not in {c[1] for c in conn.execute(f"PRAGMA table_info({table})")}:
                continue
            for rowid, value in conn.execute(
                f"SELECT rowid, {column} FROM {table} WHERE instr({column}, ?) > 0", (old + "/",)
            ).fetchall():
                conn.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value.replace(old + "/", root + "/"), rowid)
                )
                changed += 1
    log.warning("MLflow store %s was copied from %s: %d stored paths now point into %s", db_path, old, changed, root)
    return changed


def _norm_location(location: str) -> str:
    loc = location[len("file://") :] if location.startswith("file://") else location
    return loc.rstrip("/")


def _quiet_migrations() -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
