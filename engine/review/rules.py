"""Which faces a review batch asks people about: pure numpy, no I/O (docs/review.md).

A rule gives every candidate face a recorded **score** (the number people see: the margin, the entropy, the gap
under the threshold, ...) and a **priority** (higher is asked first). :func:`choose` then takes B faces by priority,
optionally with a per-class quota on the teacher's predicted class and a minimum pHash distance between any two
faces of the batch. Ties are broken by key, so a batch is the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.partition_rule import keys_uniform

POOL_RULES = ("margin", "entropy", "disagreement", "near_threshold", "random")
"""Rules that rank the unlabelled pool (from the round's score parts)."""
LABELLED_RULES = ("label_issues",)
"""Rules that rank the labelled set (people re-check given labels)."""

RULE_DOC = {
    "margin": "smallest top-1 − top-2 probability first",
    "entropy": "highest entropy of the teacher's probabilities first",
    "disagreement": "highest disagreement between the teacher's members, branches or flip views first",
    "near_threshold": "just under its predicted class's threshold first (score: the gap)",
    "label_issues": "lowest cleanlab label quality among flagged labelled rows first",
    "random": "a seeded hash of the key (the baseline)",
}


@dataclass(frozen=True)
class Ranked:
    """Per candidate: the rule's ``score`` (recorded), ``priority`` (higher first) and whether it may be asked."""

    score: npt.NDArray[np.float64]
    priority: npt.NDArray[np.float64]
    eligible: npt.NDArray[np.bool_]


def rank(
    rule: str,
    keys: list[str],
    *,
    pred: npt.NDArray[np.integer] | None = None,
    conf: npt.NDArray[np.floating] | None = None,
    margin: npt.NDArray[np.floating] | None = None,
    entropy: npt.NDArray[np.floating] | None = None,
    disagreement: npt.NDArray[np.floating] | None = None,
    thresholds: npt.NDArray[np.floating] | None = None,
    quality: npt.NDArray[np.floating] | None = None,
    seed: int = 0,
) -> Ranked:
    """Score and priority of every candidate under ``rule`` (one of engine.config.REVIEW_RULES).

    ``near_threshold`` asks only faces under their predicted class's threshold (those at or above it are
    pseudo-labelled already, and a class that is never labelled has no threshold to be near).
    """
    n = len(keys)
    everyone = np.ones(n, dtype=bool)

    def need(name: str, value: npt.NDArray[np.floating] | npt.NDArray[np.integer] | None) -> npt.NDArray[np.float64]:
        if value is None:
            hint = (
                "a teacher with members or branches (an ensemble, ESR) or score.flip_views=true with score.tta_flip"
                if name == "disagreement"
                else f"the {name} column"
            )
            raise ConfigError(f"review.rule={rule} needs {hint}; choose another review.rule")
        return np.asarray(value, dtype=np.float64)

    if rule == "margin":
        s = need("margin", margin)
        return Ranked(s, -s, everyone)
    if rule == "entropy":
        s = need("entropy", entropy)
        return Ranked(s, s.copy(), everyone)
    if rule == "disagreement":
        s = need("disagreement", disagreement)
        return Ranked(s, s.copy(), everyone)
    if rule == "near_threshold":
        c, p, t = need("conf", conf), np.asarray(need("pred", pred), dtype=np.int64), need("thresholds", thresholds)
        thr = t[p]
        gap = thr - c
        ok = np.isfinite(thr) & (gap > 0)
        return Ranked(np.where(ok, gap, np.nan), np.where(ok, -gap, -np.inf), ok)
    if rule == "label_issues":
        s = need("quality", quality)
        return Ranked(s, -s, everyone)
    if rule == "random":
        u = keys_uniform(seed, keys)
        return Ranked(u, -u, everyone)
    raise ConfigError(f"review.rule={rule!r} is not known; choose one of {', '.join((*POOL_RULES, *LABELLED_RULES))}")


def order(priority: npt.NDArray[np.floating], keys: list[str]) -> npt.NDArray[np.int64]:
    """Indices by priority, highest first, ties by key (ascending)."""
    return np.lexsort((np.asarray(keys, dtype=object).astype(str), -np.asarray(priority, dtype=np.float64)))


def quotas(available: npt.NDArray[np.integer], size: int) -> npt.NDArray[np.int64]:
    """Per-class shares of ``size``: equal, a class with fewer faces than its share gives the rest to the others
    (water-filling); the remainder of an uneven split goes to the lowest class indices."""
    avail = np.asarray(available, dtype=np.int64)
    q = np.zeros_like(avail)
    left = min(int(size), int(avail.sum()))
    while left > 0:
        open_ = np.flatnonzero(q < avail)
        share, extra = divmod(left, len(open_))
        for j, c in enumerate(open_):
            give = min(int(avail[c] - q[c]), share + (1 if j < extra else 0))
            q[c] += give
            left -= give
    return q


def hamming(a: np.uint64, b: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Bit distance between one 64-bit pHash and many."""
    return np.bitwise_count(np.bitwise_xor(b, np.uint64(a))).astype(np.int64)


def choose(
    priority: npt.NDArray[np.floating],
    eligible: npt.NDArray[np.bool_],
    keys: list[str],
    size: int,
    *,
    classes: npt.NDArray[np.integer] | None = None,
    num_classes: int = 0,
    phash: npt.NDArray[np.uint64] | None = None,
    min_distance: int = 0,
) -> npt.NDArray[np.int64]:
    """The batch: indices of at most ``size`` eligible candidates, in the order they were chosen.

    With ``classes`` (the teacher's predicted class per candidate), each class gets its :func:`quotas` share; with
    ``min_distance`` > 0 (and ``phash``), a candidate within that pHash distance of one already chosen is skipped.
    Shares left unfilled because of that go, in a second pass, to the best remaining candidates of any class.
    """
    ranked = [int(i) for i in order(priority, keys) if eligible[i]]
    chosen: list[int] = []
    hashes = np.zeros(0, dtype=np.uint64)

    def take(i: int) -> bool:
        nonlocal hashes
        if phash is not None and min_distance > 0:
            if len(hashes) and int(hamming(phash[i], hashes).min()) < min_distance:
                return False
            hashes = np.append(hashes, phash[i])
        chosen.append(i)
        return True

    if classes is not None:
        cls = np.asarray(classes, dtype=np.int64)
        avail = np.bincount(cls[ranked], minlength=num_classes) if ranked else np.zeros(num_classes, np.int64)
        share = quotas(avail, size)
        for c in range(len(share)):
            got = 0
            for i in ranked:
                if got >= share[c]:
                    break
                if cls[i] == c and take(i):
                    got += 1
    taken = set(chosen)
    for i in ranked:
        if len(chosen) >= size:
            break
        if i not in taken and take(i):
            taken.add(i)
    return np.asarray(chosen[:size], dtype=np.int64)
