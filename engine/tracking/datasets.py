"""Committed parquet files (the labelled set, a round's selection) as MLflow dataset inputs of a run, digest = the
fingerprint of the stage that committed them."""

from __future__ import annotations

import warnings
from typing import Any

from engine.tracking.store import local_path as _local_path


class DatasetInputs:
    """The dataset calls of :class:`engine.tracking.Tracker` (a mixin over its client)."""

    _client: Any

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
