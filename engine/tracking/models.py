"""Each round's student as an MLflow model (:mod:`engine.tracking.pyfunc_model`, code rather than a pickle) and as a
version of the campaign's registered model, with the ``champion`` alias on the campaign's teacher."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.io import fs
from engine.tracking.names import MODEL_NAME
from engine.tracking.runs import _env_restored, global_uris
from engine.tracking.store import local_path as _local_path

log = logging.getLogger(__name__)


class ModelRegistry:
    """The model and registry calls of :class:`engine.tracking.Tracker` (a mixin over its client and experiment)."""

    uri: str
    experiment_id: str
    _client: Any

    # -- models ----------------------------------------------------------------------------------------

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

    def _logged_model(self, run_id: str) -> str | None:
        models = self._client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
        )
        return f"models:/{models[0].model_id}" if models else None


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
