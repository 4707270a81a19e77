"""Valence-consistency gating of pseudo-labels (FER-Zoo style): per-class valence bounds, in pure numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.labels import LabelSpace


def valence_bounds(
    space: LabelSpace, min_valence: Mapping[str, float], max_valence: Mapping[str, float]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-class (lo, hi) valence bounds from class-name maps; classes without a rule get (-inf, +inf).

    Raises:
        ConfigError: a class name that is not in ``space`` (aliases such as ``happy`` are accepted), or lo > hi.
    """
    c = len(space)
    lo = np.full(c, -np.inf)
    hi = np.full(c, np.inf)
    for bounds, values, key in ((lo, min_valence, "min_valence"), (hi, max_valence, "max_valence")):
        for name, v in values.items():
            if name not in space:
                raise ConfigError(
                    f"select.{key} names class {name!r}, which label space {space.name} lacks; use one of "
                    f"{', '.join(space.classes)}"
                )
            bounds[space.index(name)] = float(v)
    bad = np.flatnonzero(lo > hi)
    if bad.size:
        j = int(bad[0])
        raise ConfigError(
            f"select.min_valence {lo[j]} > select.max_valence {hi[j]} for class {space.classes[j]}: no row could pass"
        )
    return lo, hi


def va_contradicts(
    pred: npt.ArrayLike,
    valence: npt.ArrayLike,
    lo: Sequence[float] | npt.NDArray[np.float64],
    hi: Sequence[float] | npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    """True where a row's predicted valence contradicts its predicted class: ``valence < lo[pred]`` or
    ``valence > hi[pred]``. A missing (NaN) valence never contradicts.

    Args:
        pred: (N,) class indices.
        valence: (N,) predicted valence in [-1, 1].
        lo: (C,) lowest allowed valence per class.
        hi: (C,) highest allowed valence per class.

    Returns:
        (N,) bool.
    """
    p = np.asarray(pred, dtype=np.int64)
    v = np.asarray(valence, dtype=np.float64)
    lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = (v < lo_a[p]) | (v > hi_a[p])
    return out & ~np.isnan(v)
