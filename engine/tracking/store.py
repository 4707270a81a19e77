"""Where MLflow keeps a storage root's runs: the embedded sqlite store beside the root (created and migrated by one
process at a time), its artifact folder, and the re-pointing of a store whose root was copied or moved."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from engine.io.lock import waiting_lock
from engine.tracking.names import (
    ARTIFACTS_DIR,
    DB_NAME,
    EXPERIMENT_KIND,
    TAG_EXPERIMENT_KIND,
)

log = logging.getLogger(__name__)

QUIET_LOGGERS = (
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
    local = local_path(storage_root)
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
    local = local_path(storage_root)
    if local is not None:
        return os.path.join(local, ARTIFACTS_DIR)
    return f"{storage_root.rstrip('/')}/{ARTIFACTS_DIR}"


def open_store(uri: str, experiment: str, artifact_root: str) -> tuple[Any, str]:
    """``(MlflowClient, experiment id)`` of ``uri``; an embedded sqlite store is created, migrated or relocated by
    one process at a time (a lock beside ``mlflow.db``): two drivers creating it together fail in alembic's
    migration ("expected to match one row"), so later ones wait a moment here."""
    from mlflow import MlflowClient

    quiet_migrations()
    if not uri.startswith("sqlite:///"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return client, ensure_experiment(client, experiment, artifact_root)
    db_path = uri[len("sqlite:///") :]
    parent = os.path.dirname(db_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with waiting_lock(db_path):
        relocate_embedded_store(db_path, experiment, artifact_root)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return client, ensure_experiment(client, experiment, artifact_root)


def ensure_experiment(client: Any, name: str, artifact_root: str) -> str:
    """The id of experiment ``name`` (created with ``artifact_root`` and the model-training kind tag when missing;
    restored when deleted), through ``client`` (an ``MlflowClient``)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(
                client.create_experiment(
                    name, artifact_location=artifact_root, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
                )
            )
        except MlflowException:  # created by a concurrent process between the two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(TAG_EXPERIMENT_KIND) is None:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    if exp.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(exp.experiment_id)
    if norm_location(exp.artifact_location) != norm_location(artifact_root):
        log.warning(
            "MLflow experiment %r keeps its artifact location %s (asked for %s); use another "
            "tracking.experiment name to store artifacts elsewhere",
            name,
            exp.artifact_location,
            artifact_root,
        )
    return str(exp.experiment_id)


def local_path(path: str) -> str | None:
    """Absolute local path for a plain path or ``file://`` URI; None for any other scheme (no network call)."""
    if path.startswith("file://"):
        return os.path.abspath(path[len("file://") :])
    if "://" in path:
        return None
    return os.path.abspath(path)


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
    if not os.path.isfile(db_path) or os.path.dirname(norm_location(artifact_root)) != root:
        return 0
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        row = conn.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
        location = norm_location(str(row[0])) if row else ""
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


def norm_location(location: str) -> str:
    loc = location[len("file://") :] if location.startswith("file://") else location
    return loc.rstrip("/")


def quiet_migrations() -> None:
    """Alembic's and MLflow's store loggers at WARNING: a new store's migrations print nothing."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
