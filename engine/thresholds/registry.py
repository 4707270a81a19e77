"""Look up a threshold policy by name and build it from a (possibly larger) parameter mapping."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError
from engine.labels import LabelSpace
from engine.thresholds import distribution, dtm, fixed, freematch, precision, softmatch  # noqa: F401  (fill the registry)
from engine.thresholds.base import REGISTRY, ThresholdPolicy


class UnknownPolicy(ConfigError):
    """A threshold policy name is not registered."""


def available_policies() -> tuple[str, ...]:
    """Registered policy names, sorted."""
    return tuple(sorted(REGISTRY))


def policy_class(name: str) -> type[ThresholdPolicy]:
    """Return the class registered under ``name``; raise :class:`UnknownPolicy` with the closest name."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, REGISTRY, n=1, cutoff=0.0)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownPolicy(f"unknown threshold policy {name!r}; {hint}valid: {', '.join(available_policies())}")


def get_policy(name: str, params: Mapping[str, Any] | Any = None, /, **overrides: Any) -> ThresholdPolicy:
    """Build the policy ``name`` from the parameters it declares.

    Args:
        name: registered snake-case name (``fixed``, ``dtm_r``, ``flexmatch``, ``freematch``, ``softmatch``,
            ``quantile``, ``topk``, ``precision``).
        params: a mapping or a dataclass instance (e.g. ``ThresholdConfig``); only the keys that the policy's
            constructor declares are passed, the others (``policy``, or another policy's knobs) are not used.
        **overrides: take precedence over ``params`` (e.g. ``num_classes=7, num_unlabelled=n_u``).

    Raises:
        UnknownPolicy: ``name`` is not registered (the message names the closest one).
        ConfigError: a declared parameter has an invalid value.
    """
    cls = policy_class(name)
    if params is None:
        merged: dict[str, Any] = {}
    elif dataclasses.is_dataclass(params) and not isinstance(params, type):
        merged = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    elif isinstance(params, Mapping):
        merged = dict(params)
    else:
        raise ConfigError(f"get_policy params must be a mapping or a dataclass instance, got {type(params).__name__}")
    merged.update(overrides)
    return cls(**{k: merged[k] for k in cls.param_names() if k in merged})


def build_policy(
    name: str, params: Mapping[str, Any], space: LabelSpace, *, num_unlabelled: int | None = None
) -> ThresholdPolicy:
    """The one place a policy is built from the ``threshold`` config section, offline (the threshold stage) and
    online (each training worker): ``params`` are that section's fields (each policy takes the ones it declares),
    ``never_label`` class names (or indices) become indices of ``space``, ``num_classes`` is the size of ``space``.
    """
    rest = {k: v for k, v in params.items() if k not in ("policy", "never_label")}
    never = tuple(space.index(c) if isinstance(c, str) else int(c) for c in params.get("never_label", ()))
    extra: dict[str, Any] = {"never_label": never, "num_classes": len(space.classes)}
    if num_unlabelled is not None:
        extra["num_unlabelled"] = num_unlabelled
    return get_policy(name, rest, **extra)
