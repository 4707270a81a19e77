"""The threshold-policy interface, its registry, and helpers shared by every policy (pure numpy)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.stats import ScoreStats

NEVER = np.inf
"""Threshold of a class that must never be pseudo-labelled (written as ``null`` in JSON)."""

REGISTRY: dict[str, type[ThresholdPolicy]] = {}
"""Policy classes by snake-case name; filled by :func:`register`."""

_P = TypeVar("_P", bound="type[ThresholdPolicy]")


def register(name: str) -> Callable[[_P], _P]:
    """Class decorator: register a policy under ``name`` (snake case, unique)."""

    def deco(cls: _P) -> _P:
        if name in REGISTRY:
            raise ConfigError(f"threshold policy name {name!r} is registered twice ({REGISTRY[name]} and {cls})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def split_probs(probs: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Return ``(conf, yhat)``: max and argmax over classes of (B, C) probabilities (ties: lowest index)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ConfigError(f"threshold policies expect probs of shape (B, C), got {p.shape}")
    yhat = p.argmax(axis=1)
    return p[np.arange(p.shape[0]), yhat], yhat.astype(np.int64)


def apply_thresholds(probs: npt.ArrayLike, thresholds: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Return the (B,) float32 mask ``1[conf_b >= T(yhat_b)]`` for (B, C) probabilities and (C,) thresholds."""
    conf, yhat = split_probs(probs)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (np.asarray(probs).shape[1],):
        raise ConfigError(f"thresholds have shape {t.shape} but probs have {np.asarray(probs).shape[1]} classes")
    return (conf >= t[yhat]).astype(np.float32)


def masked_mean(values: npt.ArrayLike, weights: npt.ArrayLike) -> float:
    """Return ``sum_b w_b * v_b / B``: the unsupervised-loss reduction (reference section 1).

    The normaliser is the whole unlabelled batch size B (= mu * labelled batch), NOT the number of accepted
    samples, exactly as USB's consistency loss; an all-zero mask gives 0. The trainer's torch version must match.
    """
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1:
        raise ConfigError(f"masked_mean needs two (B,) arrays, got {v.shape} and {w.shape}")
    return float((v * w).sum() / v.shape[0]) if v.shape[0] else 0.0


def thresholds_to_json(thresholds: npt.ArrayLike) -> list[float | None]:
    """(C,) thresholds as a JSON list; ``inf`` (never label) becomes ``None``."""
    return [None if math.isinf(x) and x > 0 else float(x) for x in np.asarray(thresholds, np.float64).tolist()]


def thresholds_from_json(values: Iterable[float | None]) -> npt.NDArray[np.float64]:
    """Inverse of :func:`thresholds_to_json`."""
    return np.array([NEVER if x is None else float(x) for x in values], dtype=np.float64)


def to_jsonable(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a ``state_dict`` (numpy arrays and scalars) into plain JSON types (lists, floats, ints)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, Mapping):
            out[k] = to_jsonable(v)
        else:
            out[k] = v
    return out


def _check_never_label(never_label: Sequence[int]) -> tuple[int, ...]:
    out = []
    for x in never_label:
        if isinstance(x, str) or not isinstance(x, (int, np.integer)) or isinstance(x, bool):
            raise ConfigError(
                f"never_label must hold class indices, got {x!r}; map class names to indices with the label space "
                "before building the policy"
            )
        out.append(int(x))
    return tuple(sorted(set(out)))


class ThresholdPolicy:
    """Base of every threshold policy. Subclasses register with ``@register("name")``.

    Offline (one round): ``fit(stats)`` returns (C,) float64 thresholds computed from the round's
    :class:`ScoreStats` and loads them into the policy, so ``thresholds()`` and ``mask()`` reflect the fit.
    Online (every training step): ``step(probs, idx)`` returns (B,) float32 weights in [0, 1] and updates the
    state in the order the method prescribes; ``update`` / ``mask`` / ``weights`` are the primitives.

    A row is accepted when ``conf >= T(yhat)``. A class listed in ``never_label`` gets threshold ``inf``
    (:data:`NEVER`; ``null`` in JSON), so it is never accepted, in every policy and both forms.

    Every constructor parameter is keyword-only and stored under an attribute of the same name, and each
    subclass's ``__init__`` lists all the parameters it uses (``num_classes`` and ``never_label`` included), so
    :meth:`params` and :func:`engine.thresholds.get_policy` can read its signature.
    """

    name: ClassVar[str] = ""
    supports_offline: ClassVar[bool] = True
    supports_online: ClassVar[bool] = True
    update_before_mask: ClassVar[bool] = True
    """True: ``step`` updates the state then weights the batch (FreeMatch, SoftMatch); False: the reverse."""
    needs_reference: ClassVar[bool] = False
    """True: ``fit`` also needs the teacher's predictions on a labelled split (:meth:`set_reference`)."""

    def __init__(self, *, num_classes: int | None = None, never_label: Sequence[int] = ()) -> None:
        if num_classes is not None and int(num_classes) < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.never_label = _check_never_label(never_label)
        if self.num_classes is not None:
            self._check_classes(self.num_classes)

    # -- signature-driven parameters -------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Keyword-only parameters of this class's constructor (each subclass declares all of its own)."""
        sig = inspect.signature(cls.__init__)
        return tuple(p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY)

    def params(self) -> dict[str, Any]:
        """Every parameter this policy uses, JSON-able, for ``thresholds.json``."""
        out: dict[str, Any] = {}
        for k in self.param_names():
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    # -- offline -----------------------------------------------------------------------------------------------------
    def fit(self, stats: ScoreStats) -> npt.NDArray[np.float64]:
        """Fit per-class thresholds to one round's statistics and load them into the policy.

        Returns:
            (C,) float64; ``inf`` for classes in ``never_label``.
        """
        if not self.supports_offline:
            raise ConfigError(f"threshold policy {self.name!r} has no offline form; use it in the trainer (step)")
        if self.num_classes is not None and stats.num_classes != self.num_classes:
            raise ConfigError(
                f"policy {self.name!r} has num_classes={self.num_classes}, stats have {stats.num_classes}"
            )
        if stats.n == 0:
            raise ConfigError(f"policy {self.name!r} cannot fit on empty stats (n=0); score the unlabelled pool first")
        self._check_classes(stats.num_classes)
        self.num_classes = stats.num_classes
        self._fit(stats)
        return self.thresholds()

    def _fit(self, stats: ScoreStats) -> None:
        raise NotImplementedError

    def set_reference(self, pred: npt.ArrayLike, conf: npt.ArrayLike, label: npt.ArrayLike) -> None:
        """The teacher's predicted class, confidence and true label on a labelled split (``needs_reference``)."""
        raise ConfigError(f"threshold policy {self.name!r} is fitted on the pool alone; it takes no reference split")

    def offline_rule(self) -> str:
        """How ``fit`` derives each class's threshold, in one line with this policy's numbers (``thresholds.json``)."""
        doc = (type(self).__doc__ or self.name).strip().splitlines()[0]
        return f"{self.name}: {doc}"

    # -- online ------------------------------------------------------------------------------------------------------
    def update(self, probs: npt.ArrayLike, idx: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """Update the state with one unlabelled weak-view batch; return the new (C,) thresholds.

        Args:
            probs: (B, C) probabilities of the weak view, computed without gradient.
            idx: (B,) int64 indices of the rows in the unlabelled pool (needed by cache-based policies).
        """
        if not self.supports_online:
            raise ConfigError(f"threshold policy {self.name!r} is offline-only; call fit(stats) once per round")
        p = np.asarray(probs, dtype=np.float64)
        self._require_classes(p)
        self._update(p, None if idx is None else np.asarray(idx, dtype=np.int64))
        return self.thresholds()

    def _update(self, probs: npt.NDArray[np.float64], idx: npt.NDArray[np.int64] | None) -> None:
        return None

    def step(self, probs: npt.ArrayLike, idx: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """One training step: update and weight the batch in the method's order; return (B,) float32 weights."""
        if self.update_before_mask:
            self.update(probs, idx)
            return self.weights(probs)
        w = self.weights(probs)
        self.update(probs, idx)
        return w

    def thresholds(self) -> npt.NDArray[np.float64]:
        """Current (C,) float64 thresholds; ``inf`` for classes in ``never_label``."""
        if self.num_classes is None:
            raise ConfigError(f"policy {self.name!r} needs num_classes (pass it, or call fit/update first)")
        t = np.array(self._thresholds(), dtype=np.float64)
        t[list(self.never_label)] = NEVER
        return t

    def _thresholds(self) -> npt.NDArray[np.float64]:
        raise NotImplementedError

    def mask(self, probs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B,) float32 in {0, 1}: ``1[conf_b >= T(yhat_b)]`` with the current thresholds (no state change)."""
        self._require_classes(np.asarray(probs))
        return apply_thresholds(probs, self.thresholds())

    def weights(self, probs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B,) float32 per-sample loss weights in [0, 1]; hard policies return :meth:`mask`."""
        return self.mask(probs)

    # -- offline per-row weights (select.weighting: policy) ----------------------------------------------------------
    def row_weights(self, pred: npt.ArrayLike, conf: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(N,) float32 weight of rows given only their pseudo-label and confidence, with the fitted state.

        Hard policies: ``1[conf >= T(pred)]``, so every row a hard threshold admits weighs 1. Soft policies
        (SoftMatch) override it with their weight function of the confidence.
        """
        t = self.thresholds()
        c = np.asarray(conf, dtype=np.float64)
        return np.asarray(c >= t[np.asarray(pred, dtype=np.int64)], dtype=np.float32)

    def admission(self, min_weight: float) -> npt.NDArray[np.float64]:
        """(C,) lowest confidence per class whose :meth:`row_weights` is at least ``min_weight`` (``inf``: never).

        Hard policies: their thresholds (the weight is 0 below and 1 above). Soft policies lower it.
        """
        return self.thresholds()

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy name, parameters and state (numpy arrays or scalars); see :func:`to_jsonable` for JSON."""
        return {"policy": self.name, "params": self.params(), "state": self._state()}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`; later outputs equal those of the saved policy."""
        if d.get("policy") != self.name:
            raise ConfigError(f"state was saved by policy {d.get('policy')!r}, cannot load it into {self.name!r}")
        if d.get("params") is not None and d["params"] != to_jsonable(self.params()):
            raise ConfigError(
                f"state of {self.name!r} was saved with params {d['params']}, this policy has {self.params()}; "
                "build the policy with the saved params"
            )
        self._load_state(d["state"])

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        return None

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _check_classes(self, num_classes: int) -> None:
        bad = [c for c in self.never_label if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"never_label indices {bad} are outside [0, {num_classes}); check the label space")

    def _require_classes(self, probs: npt.NDArray[Any]) -> None:
        if probs.ndim != 2:
            raise ConfigError(f"policy {self.name!r} expects probs of shape (B, C), got {probs.shape}")
        if self.num_classes is None:
            raise ConfigError(f"policy {self.name!r} needs num_classes for the online form; pass num_classes=C")
        if probs.shape[1] != self.num_classes:
            raise ConfigError(f"policy {self.name!r} has num_classes={self.num_classes}, probs have {probs.shape[1]}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
