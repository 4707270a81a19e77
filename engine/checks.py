"""Checks of a loaded config that need the engine's registries or span sections: run by every job right after
``load_config``, so no failure a config check could catch first appears after a stage has run.

``engine.config`` checks each key alone (types, ranges, fixed choices); this module checks names against what is
registered (threshold policies, source formats, label spaces, model names) and the rules between keys that the
stages rely on. It builds no net and reads no data; timm is imported only for a model name that is not an engine
net.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

from engine.config import Config
from engine.errors import ConfigError, UnknownLabelError


def check_config(cfg: Config) -> None:
    """Raise the first problem of ``cfg`` that :func:`engine.config.load_config` cannot see, as one line.

    Raises:
        ConfigError: an unknown policy, format, label space or model name (with the closest valid one), a policy
            parameter its constructor refuses, ``tau_min`` above ``tau`` for a policy that reads both, or two keys
            that contradict each other.
        MissingExtra: a timm model name while timm is not installed.
    """
    _check_sources(cfg)
    for index, what in ((0, "model"), (1, "student.model")):
        round_cfg = cfg.for_round(index)
        if index == 0 or round_cfg.model != cfg.model:
            _check_model(round_cfg, what)
    _check_policy(cfg, cfg.threshold.policy, "threshold.policy")
    for index in (0, 1):
        online = cfg.for_round(index).train.online_policy
        if online is not None:
            _check_policy(cfg, online, "train.online_policy" if index == 0 else "student.train.online_policy")
    _check_select(cfg)


def _choice(key: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        close = difflib.get_close_matches(value, list(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        raise ConfigError(f"{key}={value!r} is not known{hint} valid: {', '.join(sorted(valid))}")


def _check_sources(cfg: Config) -> None:
    from engine.labels import LABEL_SPACES
    from engine.sources import adapter_names

    for name, src in cfg.sources.items():
        _choice(f"sources.{name}.format", src.format, adapter_names())
        _choice(f"sources.{name}.label_space", src.label_space, tuple(LABEL_SPACES))
    labelled = [s for s in cfg.campaign.labelled if s in cfg.sources]
    spaces = {cfg.sources[s].label_space for s in labelled}
    if len(spaces) > 1:
        raise ConfigError(
            f"campaign.labelled sources must share one label space, got {sorted(spaces)} "
            f"({', '.join(f'{s}: {cfg.sources[s].label_space}' for s in labelled)})"
        )


def _check_model(cfg: Config, key: str) -> None:
    from engine.models.factory import check_model_name

    check_model_name(cfg.model, key)
    for flag in ("soft_labels", "distill"):
        if getattr(cfg.train, flag) and cfg.model.head != "linear":
            train_key = "train" if key == "model" else "student.train"
            raise ConfigError(
                f"{train_key}.{flag}=true needs {key}.head=linear (one softmax over the classes), got "
                f"{cfg.model.head!r}"
            )


def _check_policy(cfg: Config, name: str, key: str) -> None:
    """``name`` is registered, has the form ``key`` uses, and its constructor takes the ``threshold`` section."""
    from engine.labels import get_label_space
    from engine.thresholds.registry import available_policies, build_policy, policy_class

    _choice(key, name, available_policies())
    cls = policy_class(name)
    online = key.endswith("online_policy")
    if online and not cls.supports_online:
        online_ones = [p for p in available_policies() if policy_class(p).supports_online]
        raise ConfigError(f"{key}={name!r} has no online form; use one of {', '.join(online_ones)}")
    if not online and not cls.supports_offline:
        raise ConfigError(f"{key}={name!r} has no offline form; use it as train.online_policy")
    t = cfg.threshold
    if {"tau", "tau_min"} <= set(cls.param_names()) and t.tau_min > t.tau:
        raise ConfigError(
            f"threshold.tau_min={t.tau_min} is above threshold.tau={t.tau}; {name} keeps every threshold between "
            "them: set tau_min <= tau"
        )
    space = _campaign_space(cfg)
    if space is None:  # no labelled source yet (an ingest-only config): the class count is unknown
        return
    try:
        build_policy(name, dataclasses.asdict(t), get_label_space(space), num_unlabelled=1 if online else None)
    except UnknownLabelError as exc:
        raise ConfigError(f"threshold.never_label: {exc}") from None


def _campaign_space(cfg: Config) -> str | None:
    labelled = [s for s in cfg.campaign.labelled if s in cfg.sources]
    return cfg.sources[labelled[0]].label_space if labelled else None


def _check_select(cfg: Config) -> None:
    from engine.labels import get_label_space
    from engine.va_gate import valence_bounds

    space = _campaign_space(cfg)
    s = cfg.select
    if space is not None and (s.min_valence or s.max_valence):
        valence_bounds(get_label_space(space), s.min_valence, s.max_valence)
