"""Review rules by hand on a constructed pool (engine/review/rules.py): each rule's order, the quota, the diversity."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.partition_rule import key_uniform
from engine.review.rules import choose, quotas, rank

KEYS = ["a", "b", "c", "d", "e", "f"]
PRED = np.array([0, 0, 1, 1, 2, 2])
CONF = np.array([0.90, 0.55, 0.70, 0.40, 0.35, 0.99])
MARGIN = np.array([0.85, 0.10, 0.45, 0.05, 0.20, 0.98])
ENTROPY = np.array([0.3, 1.2, 0.8, 1.5, 1.1, 0.1])
DISAGREE = np.array([0.0, 0.7, 0.2, 0.1, 0.9, 0.0])
THRESHOLDS = np.array([0.95, 0.60, np.inf])


def pick(rule: str, size: int, **kw: object) -> list[str]:
    r = rank(
        rule,
        KEYS,
        pred=PRED,
        conf=CONF,
        margin=MARGIN,
        entropy=ENTROPY,
        disagreement=DISAGREE,
        thresholds=THRESHOLDS,
        quality=np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.8]),
        seed=3,
    )
    return [KEYS[i] for i in choose(r.priority, r.eligible, KEYS, size, **kw)]  # type: ignore[arg-type]


def test_margin_takes_the_smallest_margins_first() -> None:
    assert pick("margin", 3) == ["d", "b", "e"]


def test_entropy_takes_the_highest_entropy_first() -> None:
    assert pick("entropy", 3) == ["d", "b", "e"]


def test_disagreement_takes_the_highest_disagreement_first() -> None:
    assert pick("disagreement", 2) == ["e", "b"]


def test_near_threshold_asks_only_faces_under_their_class_threshold_closest_first() -> None:
    # gaps: a 0.05, b 0.40, c under-not (0.70 >= 0.60), d 0.20; class 2 has no threshold (never labelled)
    r = rank("near_threshold", KEYS, pred=PRED, conf=CONF, thresholds=THRESHOLDS)
    assert r.eligible.tolist() == [True, True, False, True, False, False]
    np.testing.assert_allclose(r.score[[0, 1, 3]], [0.05, 0.40, 0.20])
    assert pick("near_threshold", 6) == ["a", "d", "b"]


def test_label_issues_takes_the_lowest_quality_first() -> None:
    assert pick("label_issues", 3) == ["b", "e", "d"]


def test_random_is_a_seeded_hash_of_the_key() -> None:
    expected = sorted(KEYS, key=lambda k: key_uniform(3, k))
    assert pick("random", 6) == expected
    r = rank("random", KEYS, seed=3)
    assert r.score.tolist() == [key_uniform(3, k) for k in KEYS]


def test_ties_are_broken_by_key() -> None:
    r = rank("margin", ["z", "y", "x"], margin=np.array([0.5, 0.5, 0.5]))
    assert choose(r.priority, r.eligible, ["z", "y", "x"], 3).tolist() == [2, 1, 0]


def test_a_rule_without_its_column_names_the_fix() -> None:
    needs = r"review\.rule=disagreement needs a teacher with members or branches \(an ensemble, ESR\) or score\.flip_"
    with pytest.raises(ConfigError, match=needs):
        rank("disagreement", KEYS, margin=MARGIN)


def test_quotas_share_equally_and_pass_unused_shares_on() -> None:
    assert quotas(np.array([10, 10, 10]), 9).tolist() == [3, 3, 3]
    assert quotas(np.array([10, 10, 10]), 10).tolist() == [4, 3, 3]
    assert quotas(np.array([1, 10, 0, 10]), 9).tolist() == [1, 4, 0, 4]
    assert quotas(np.array([2, 1]), 9).tolist() == [2, 1]


def test_per_class_quota_gives_each_predicted_class_its_share() -> None:
    # margin order is d b e c a f; with a quota of 1 per class (3 classes, size 3): best of each class
    assert pick("margin", 3, classes=PRED, num_classes=3) == ["b", "d", "e"]
    # size 4: shares 2, 1, 1 (the remainder goes to class 0)
    assert pick("margin", 4, classes=PRED, num_classes=3) == ["b", "a", "d", "e"]


def test_min_phash_distance_skips_near_duplicates_and_fills_from_the_rest() -> None:
    phash = np.array([0b0, 0b1, 0b1111_0000, 0b11, 0b1111_1111_0000_0000, 0b1111], dtype=np.uint64)
    # margin order d(0b11) b(0b1: distance 1 from d) e c a f; at distance >= 3, b is a near-duplicate of d
    assert pick("margin", 3, phash=phash, min_distance=3) == ["d", "e", "c"]
    assert pick("margin", 3, phash=phash, min_distance=0) == ["d", "b", "e"]


def test_quota_short_of_diverse_faces_is_filled_by_other_classes() -> None:
    phash = np.array([0, 0, 0xFF << 8, 0xFF << 16, 0xFF << 24, (0xFF << 24) | 1], dtype=np.uint64)
    # shares 2, 1, 1; class 0: b, then a is b's twin (distance 0), so class 0 gets 1 of its 2; class 1: d; class 2: e
    # (f is e's near-twin); the second pass fills the free place with the best face left: c
    got = pick("margin", 4, classes=PRED, num_classes=3, phash=phash, min_distance=2)
    assert got == ["b", "d", "e", "c"]
