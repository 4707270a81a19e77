"""Unit tests of DTM-R and FlexMatch thresholds: reference 2.6 sanity tests, toy values and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds import MAPPINGS, DTMRPolicy, FlexMatchPolicy, learning_effect


def _row(c: int, conf: float, num_classes: int = 3) -> list[float]:
    rest = (1.0 - conf) / (num_classes - 1)
    return [conf if k == c else rest for k in range(num_classes)]


def test_mappings_fix_one_and_increase() -> None:
    x = np.linspace(0, 1, 101)
    for name, m in MAPPINGS.items():
        y = m(x)
        assert y[-1] == pytest.approx(1.0, abs=1e-15), name
        assert (np.diff(y) > 0).all() and (y >= 0).all() and (y <= 1 + 1e-15).all(), name
    assert MAPPINGS["convex"](np.array([0.0, 0.5]))[1] == pytest.approx(1 / 3)
    assert MAPPINGS["convex"](np.array([0.0]))[0] == 0.0 and MAPPINGS["linear"](np.array([0.25]))[0] == 0.25


def test_learning_effect_hand_values() -> None:
    np.testing.assert_allclose(learning_effect([4, 2, 0], 10, warmup=True), [0.4, 0.2, 0.0])
    np.testing.assert_allclose(learning_effect([4, 2, 0], 10, warmup=False), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(learning_effect([0, 0], 0, warmup=True), [0.0, 0.0])


def test_empty_cache_gives_tau_min_and_flexmatch_uses_everything() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=64)
    flex = FlexMatchPolicy(num_classes=4, num_unlabelled=100)
    np.testing.assert_array_equal(flex.thresholds(), np.zeros(4))
    np.testing.assert_array_equal(flex.mask(probs), np.ones(64, np.float32))
    dtm = DTMRPolicy(tau_min=0.5, num_classes=4, num_unlabelled=100)
    np.testing.assert_array_equal(dtm.thresholds(), np.full(4, 0.5))


def test_evenly_cached_classes_give_tau_max() -> None:
    probs = np.array([_row(c % 3, 0.99) for c in range(6)])
    pol = DTMRPolicy(tau=0.95, tau_min=0.3, num_classes=3, num_unlabelled=6)
    t = pol.update(probs, np.arange(6))
    np.testing.assert_array_equal(pol.cache, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(pol.beta, np.ones(3))
    np.testing.assert_array_equal(t, np.full(3, 0.95))


def test_online_step_hand_values_and_order() -> None:
    probs = np.array([_row(0, 0.95), _row(0, 0.92), _row(1, 0.5), _row(2, 0.91)])
    pol = DTMRPolicy(tau=0.9, tau_min=0.1, num_classes=3, num_unlabelled=10)
    w = pol.step(probs, np.array([0, 1, 2, 3]))
    # step masks with the previous beta (all zero -> T = tau_min = 0.1), then updates the cache
    np.testing.assert_array_equal(w, [1, 1, 1, 1])
    np.testing.assert_array_equal(pol.cache, [0, 0, -1, 2, -1, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(pol.beta, [2 / 7, 0.0, 1 / 7])  # sigma = [2, 0, 1], N_unused = 7
    np.testing.assert_allclose(pol.thresholds(), [0.9 / 6, 0.1, 0.1])  # convex: (2/7)/(12/7) = 1/6
    nowarm = DTMRPolicy(tau=0.9, tau_min=0.1, warmup=False, num_classes=3, num_unlabelled=10)
    nowarm.update(probs, np.array([0, 1, 2, 3]))
    np.testing.assert_allclose(nowarm.thresholds(), [0.9, 0.1, 0.3])  # beta = [1, 0, 0.5]
    # the next step is masked with the updated thresholds [0.9, 0.1, 0.3] before its own update
    w2 = nowarm.step(np.array([_row(0, 0.85), _row(1, 0.5), [0.3, 0.3, 0.4]]), np.array([4, 5, 6]))
    np.testing.assert_array_equal(w2, [0, 1, 1])


def test_cache_entries_are_overwritten_but_never_reset() -> None:
    pol = FlexMatchPolicy(tau=0.9, num_classes=3, num_unlabelled=4)
    pol.update(np.array([_row(0, 0.95), _row(2, 0.95)]), np.array([0, 1]))
    pol.update(np.array([_row(1, 0.96), _row(1, 0.3)]), np.array([0, 1]))
    np.testing.assert_array_equal(pol.cache, [1, 2, -1, -1])
    rng = np.random.default_rng(1)
    seen = np.zeros(4, bool)
    for _ in range(50):
        probs = rng.dirichlet(np.full(3, 0.2), size=3)
        idx = rng.integers(0, 4, size=3)
        pol.update(probs, idx)
        now = pol.cache >= 0
        assert (now >= seen).all()
        seen = now


def test_offline_round_one_with_warm_up_gives_tau_min() -> None:
    probs = [_row(0, 0.97)] * 5 + [_row(1, 0.96)] * 3 + [_row(k % 3, 0.5) for k in range(92)]
    stats = ScoreStats.from_probs(np.array(probs), bins=100)
    # the old offline rule (warmup=True): the 92 unconfident rows normalise beta to [5/92, 3/92, 0] -> all at tau_min
    np.testing.assert_array_equal(DTMRPolicy(tau=0.95, tau_min=0.5, warmup=True).fit(stats), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(
        FlexMatchPolicy(tau=0.95, warmup=True).fit(stats), 0.95 * np.array([5 / 179, 3 / 181, 0.0])
    )
    # the default (warm-up off offline) and warmup=False: beta = [1, 0.6, 0] -> convex M = [1, 3/7, 0]
    for warmup in (None, False):
        pol = DTMRPolicy(tau=0.95, tau_min=0.5, warmup=warmup)
        np.testing.assert_allclose(pol.fit(stats), [0.95, 0.5, 0.5])
    np.testing.assert_allclose(DTMRPolicy(tau=0.95, tau_min=0.3).fit(stats), [0.95, 0.95 * 3 / 7, 0.3])
    np.testing.assert_allclose(FlexMatchPolicy(tau=0.95).fit(stats), [0.95, 0.95 * 3 / 7, 0.0])


def test_offline_default_rule_on_a_constructed_pool_by_hand() -> None:
    """Four classes, tau 0.9, tau_min 0.4, convex M(x) = x / (2 - x); 400 pool rows, most of them below tau.

    sigma = #{yhat = c, conf >= 0.9} = [60, 30, 45, 0]; max sigma = 60 -> beta = [1, 1/2, 3/4, 0]
    M(beta) = [1, (1/2)/(3/2) = 1/3, (3/4)/(5/4) = 3/5, 0]; T = max(0.4, 0.9 * M) = [0.9, 0.4, 0.54, 0.4].
    The old rule normalises by N_unused = 400 - 135 = 265 instead: beta <= 60/265, every T at 0.4.
    """
    probs = (
        [_row(0, 0.95, num_classes=4)] * 60 + [_row(0, 0.6, num_classes=4)] * 90
        + [_row(1, 0.92, num_classes=4)] * 30 + [_row(1, 0.5, num_classes=4)] * 70
        + [_row(2, 0.99, num_classes=4)] * 45 + [_row(2, 0.7, num_classes=4)] * 55
        + [_row(3, 0.8, num_classes=4)] * 50
    )  # fmt: skip
    stats = ScoreStats.from_probs(np.array(probs), bins=100)
    pol = DTMRPolicy(tau=0.9, tau_min=0.4)
    np.testing.assert_allclose(pol.fit(stats), [0.9, 0.4, 0.54, 0.4])
    np.testing.assert_allclose(pol.beta, [1.0, 0.5, 0.75, 0.0])
    assert "max_c' sigma(c') (warm-up off)" in pol.offline_rule() and "tau=0.9" in pol.offline_rule()
    old = DTMRPolicy(tau=0.9, tau_min=0.4, warmup=True)
    np.testing.assert_array_equal(old.fit(stats), [0.4, 0.4, 0.4, 0.4])
    np.testing.assert_allclose(old.beta, [60 / 265, 30 / 265, 45 / 265, 0.0])
    assert "N_unused) (warm-up on)" in old.offline_rule()


def test_online_default_keeps_flexmatch_warm_up() -> None:
    pol = DTMRPolicy(tau=0.9, tau_min=0.0, num_classes=3, num_unlabelled=10)
    pol.update(np.array([_row(0, 0.95), _row(1, 0.95)]), np.array([0, 1]))
    np.testing.assert_allclose(pol.beta, [1 / 8, 1 / 8, 0.0])  # normalised by the 8 rows never confident


def test_offline_even_confident_round_gives_tau_max() -> None:
    stats = ScoreStats.from_probs(np.array([_row(k % 3, 0.99) for k in range(30)]), bins=100)
    pol = DTMRPolicy(tau=0.9, tau_min=0.5)
    np.testing.assert_array_equal(pol.fit(stats), [0.9, 0.9, 0.9])
    np.testing.assert_array_equal(pol.thresholds(), [0.9, 0.9, 0.9])


@pytest.mark.parametrize("mapping", sorted(MAPPINGS))
@pytest.mark.parametrize("warmup", [True, False])
def test_offline_thresholds_within_bounds_and_deterministic(mapping: str, warmup: bool) -> None:
    rng = np.random.default_rng(len(mapping) + warmup)
    for _ in range(5):
        probs = rng.dirichlet(np.full(6, rng.uniform(0.05, 1.0)), size=300)
        stats = ScoreStats.from_probs(probs, bins=50)
        pol = DTMRPolicy(tau=0.9, tau_min=0.4, mapping=mapping, warmup=warmup)
        t = pol.fit(stats)
        assert t.shape == (6,) and t.dtype == np.float64
        assert (t >= 0.4).all() and (t <= 0.9).all()
        np.testing.assert_array_equal(t, DTMRPolicy(tau=0.9, tau_min=0.4, mapping=mapping, warmup=warmup).fit(stats))


def test_flexmatch_better_learned_class_never_gets_lower_threshold() -> None:
    rng = np.random.default_rng(2)
    for _ in range(10):
        probs = rng.dirichlet(np.full(5, rng.uniform(0.05, 0.5)), size=400)
        stats = ScoreStats.from_probs(probs, bins=100)
        t = FlexMatchPolicy(tau=0.9).fit(stats)
        sigma = stats.count_at_least(0.9)
        for a in range(5):
            for b in range(5):
                if sigma[a] >= sigma[b]:
                    assert t[a] >= t[b]
    pol = FlexMatchPolicy(tau=0.8, num_classes=5, num_unlabelled=200)
    for _ in range(20):
        pol.update(rng.dirichlet(np.full(5, 0.2), size=16), rng.integers(0, 200, size=16))
        counts = np.bincount(pol.cache[pol.cache >= 0], minlength=5)
        t = pol.thresholds()
        order = np.argsort(counts, kind="stable")
        assert (np.diff(t[order]) >= 0).all()


def test_online_thresholds_stay_within_bounds() -> None:
    rng = np.random.default_rng(3)
    pol = DTMRPolicy(tau=0.85, tau_min=0.5, mapping="concave", num_classes=4, num_unlabelled=50)
    for _ in range(30):
        t = pol.update(rng.dirichlet(np.full(4, 0.3), size=8), rng.integers(0, 50, size=8))
        assert (t >= 0.5).all() and (t <= 0.85).all()


def test_invalid_configuration() -> None:
    with pytest.raises(ConfigError, match="tau_min <= tau"):
        DTMRPolicy(tau=0.4, tau_min=0.5)
    with pytest.raises(ConfigError, match="valid: convex"):
        DTMRPolicy(mapping="cubic")
    with pytest.raises(ConfigError, match="num_unlabelled"):
        DTMRPolicy(num_classes=3).update(np.array([_row(0, 0.9)]), np.array([0]))
    pol = DTMRPolicy(num_classes=3, num_unlabelled=2)
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        pol.update(np.array([_row(0, 0.9)]), np.array([2]))
    with pytest.raises(ConfigError, match="idx"):
        pol.update(np.array([_row(0, 0.9)]), None)
    with pytest.raises(ConfigError, match="num_classes=3, probs have 4"):
        pol.update(np.ones((1, 4)) / 4, np.array([0]))
