"""The MLflow model of an engine checkpoint, defined from code (MLflow "models from code"): MLflow stores this file
and the checkpoint, never a pickle; loading runs this file, which loads the checkpoint weights-only through the
engine (so the engine must be installed where the model is loaded).

Input: a DataFrame with a binary column ``image`` (encoded images, any format Pillow reads; decoded by the engine's
one decoder and resized to the checkpoint's input size). Output: a DataFrame with one float column per class of the
checkpoint's label space (probabilities, in class order) and ``label`` (the most probable class name).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
"""The key of the checkpoint in the model's artifacts."""
IMAGE_COLUMN = "image"
BATCH = 256


class CheckpointModel(PythonModel):
    """An engine checkpoint behind ``mlflow.pyfunc``: encoded images in, class probabilities out."""

    def load_context(self, context: Any) -> None:
        from engine.models.teacher import CheckpointTeacher

        self.teacher = CheckpointTeacher(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from engine.imaging import decode_pixels

        images = [decode_pixels(bytes(b)) for b in model_input[IMAGE_COLUMN]]
        names = list(self.teacher.label_space.classes)
        parts = [self.teacher.predict(images[i : i + BATCH]).probs for i in range(0, len(images), BATCH)]
        probs = np.concatenate(parts) if parts else np.zeros((0, len(names)), np.float32)
        out = pd.DataFrame(probs, columns=names)
        out["label"] = [names[i] for i in probs.argmax(1)] if len(probs) else []
        return out


mlflow.models.set_model(CheckpointModel())
