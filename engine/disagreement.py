"""Disagreement between the members (ESR branches, ensemble checkpoints) of a teacher, per sample, in pure numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError

METHODS = ("vote_entropy", "variance", "js")


def branch_disagreement(branch_probs: npt.ArrayLike, method: str = "vote_entropy") -> npt.NDArray[np.float32]:
    """One disagreement score per sample from the members' probabilities; 0 when all members agree exactly.

    - ``vote_entropy``: entropy (nats) of the distribution of the members' argmax votes; 0 when every member votes
      the same class, ``log(M)`` at most.
    - ``variance``: per-class variance of the members' probabilities (population, ddof=0), averaged over classes.
    - ``js``: generalised Jensen-Shannon divergence (the BALD mutual information): entropy of the mean minus the
      mean of the members' entropies, in nats.

    Args:
        branch_probs: (N, M, C) probabilities of M members for N samples.
        method: one of ``METHODS``.

    Returns:
        (N,) float32, >= 0.

    Raises:
        ConfigError: unknown method.
        ValueError: the array is not (N, M, C).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown disagreement {method!r}; use one of {', '.join(METHODS)}")
    bp = np.asarray(branch_probs, dtype=np.float64)
    if bp.ndim != 3:
        raise ValueError(f"branch_probs must be (N, M, C), got shape {bp.shape}")
    n, m, c = bp.shape
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if method == "vote_entropy":
        votes = bp.argmax(axis=2)
        counts = np.zeros((n, c), dtype=np.float64)
        np.add.at(counts, (np.repeat(np.arange(n), m), votes.ravel()), 1.0)
        out = _entropy(counts / m)
    elif method == "variance":
        out = bp.var(axis=1).mean(axis=1)
    else:
        out = _entropy(bp.mean(axis=1)) - _entropy(bp).mean(axis=1)
    return np.maximum(out, 0.0).astype(np.float32)


def _entropy(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Entropy (nats) over the last axis; 0·log 0 = 0."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)  # type: ignore[no-any-return]
