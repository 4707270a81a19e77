"""Unit tests of engine.stats.ScoreStats: exact toy values, summability and JSON round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.stats import ScoreStats

# Rows: pred 0 (0.7), pred 1 (0.85), pred 0 (0.34), pred 2 (1.0 -> last bin), tie 0.5/0.5 -> pred 0.
TOY = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], dtype=np.float64
)


def _toy() -> ScoreStats:
    return ScoreStats.from_probs(TOY, bins=10)


def _random(seed: int, n: int, c: int = 4, bins: int = 20) -> ScoreStats:
    rng = np.random.default_rng(seed)
    return ScoreStats.from_probs(rng.dirichlet(np.full(c, 0.5), size=n), bins=bins)


def _assert_same(a: ScoreStats, b: ScoreStats) -> None:
    assert (a.num_classes, a.bins, a.n) == (b.num_classes, b.bins, b.n)
    np.testing.assert_array_equal(a.pred_counts, b.pred_counts)
    np.testing.assert_array_equal(a.conf_hist, b.conf_hist)
    np.testing.assert_allclose(a.conf_sum, b.conf_sum, rtol=1e-12)
    np.testing.assert_allclose(a.prob_sum, b.prob_sum, rtol=1e-12)


def test_from_probs_toy_exact() -> None:
    s = _toy()
    assert (s.num_classes, s.bins, s.n) == (3, 10, 5)
    np.testing.assert_array_equal(s.pred_counts, [3, 1, 1])
    expected = np.zeros((3, 10), np.int64)
    expected[0, [3, 5, 7]] = 1  # 0.34, 0.5, 0.7 (0.7 is a bin edge: goes up)
    expected[1, 8] = 1  # 0.85
    expected[2, 9] = 1  # conf 1.0 goes in the last bin
    np.testing.assert_array_equal(s.conf_hist, expected)
    np.testing.assert_allclose(s.conf_sum, [1.54, 0.85, 1.0], rtol=1e-15)
    np.testing.assert_allclose(s.prob_sum, [1.64, 1.88, 1.48], rtol=1e-15)
    assert s.pred_counts.dtype == np.int64 and s.conf_hist.dtype == np.int64


def test_count_at_least_rounds_tau_up_to_a_bin_edge() -> None:
    s = _toy()
    np.testing.assert_array_equal(s.count_at_least(0.5), [2, 1, 1])
    np.testing.assert_array_equal(s.count_at_least(0.7), [1, 1, 1])
    # 0.71 is not an edge: rounded up to 0.8, so the 0.7 row is not counted.
    np.testing.assert_array_equal(s.count_at_least(0.71), [0, 1, 1])
    np.testing.assert_array_equal(s.count_at_least(0.0), [3, 1, 1])
    np.testing.assert_array_equal(s.count_at_least(1.01), [0, 0, 0])
    np.testing.assert_array_equal(s.count_at_least(np.inf), [0, 0, 0])


def test_count_at_least_is_exact_at_edges_for_fine_bins() -> None:
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(5, 0.3), size=400)
    s = ScoreStats.from_probs(p, bins=100)
    conf, pred = p.max(1), p.argmax(1)
    for tau in (0.2, 0.29, 0.5, 0.95):
        exact = np.bincount(pred[conf >= tau], minlength=5)
        np.testing.assert_array_equal(s.count_at_least(tau), exact)


def test_quantile_toy() -> None:
    s = _toy()
    np.testing.assert_array_equal(s.quantile(0.5), [0.5, 0.8, 0.9])
    np.testing.assert_array_equal(s.quantile(0.0), [0.3, 0.8, 0.9])
    np.testing.assert_array_equal(s.quantile(1.0), [0.7, 0.8, 0.9])
    s4 = ScoreStats.from_probs(np.array([[0.6, 0.2, 0.1, 0.1]]), bins=10)
    q = s4.quantile(0.5)
    assert q[0] == 0.6 and np.isnan(q[1:]).all()
    with pytest.raises(ConfigError, match="quantile"):
        s.quantile(1.5)


def test_means_and_variance() -> None:
    s = _toy()
    np.testing.assert_allclose(s.mean_probs, [1.64 / 5, 1.88 / 5, 1.48 / 5], rtol=1e-15)
    assert s.mean_conf == pytest.approx(3.39 / 5, rel=1e-15)
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(3, 0.7), size=300)
    fine = ScoreStats.from_probs(p, bins=1000)
    assert abs(fine.conf_var - p.max(1).var(ddof=1)) < 1e-3
    zero = ScoreStats.zero(3, 10)
    assert np.isnan(zero.mean_conf) and np.isnan(zero.mean_probs).all() and np.isnan(zero.conf_var)


def test_add_is_associative_and_zero_is_neutral() -> None:
    a, b, c = _random(0, 37), _random(1, 50), _random(2, 13)
    _assert_same((a + b) + c, a + (b + c))
    assert a + ScoreStats.zero(4, 20) == a
    assert ScoreStats.zero(4, 20) + a == a
    assert (a + b).n == 87


def test_from_probs_of_concatenation_equals_sum() -> None:
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(4, 0.5), size=90)
    whole = ScoreStats.from_probs(p, bins=20)
    parts = (
        ScoreStats.from_probs(p[:10], bins=20)
        + ScoreStats.from_probs(p[10:55], 20)
        + ScoreStats.from_probs(p[55:], 20)
    )
    _assert_same(whole, parts)
    assert ScoreStats.from_probs(np.zeros((0, 4)), bins=20) == ScoreStats.zero(4, 20)


def test_json_round_trip_is_exact() -> None:
    s = _random(7, 64)
    text = json.dumps(s.to_json())
    back = ScoreStats.from_json(json.loads(text))
    assert back == s
    assert back.to_json() == s.to_json()


def test_errors() -> None:
    with pytest.raises(ConfigError, match=r"\(C, B\)=\(4, 20\)"):
        _random(0, 5) + ScoreStats.zero(4, 10)
    with pytest.raises(ConfigError, match="NaN"):
        ScoreStats.from_probs(np.array([[np.nan, 1.0]]))
    with pytest.raises(ConfigError, match="shape"):
        ScoreStats.from_probs(np.ones(3))
    bad = _toy().to_json()
    bad["n"] = 6
    with pytest.raises(ConfigError, match="inconsistent"):
        ScoreStats.from_json(bad)
    del bad["conf_sum"]
    with pytest.raises(ConfigError, match="conf_sum"):
        ScoreStats.from_json(bad)


def test_arrays_are_read_only() -> None:
    s = _toy()
    with pytest.raises(ValueError):
        s.conf_hist[0, 0] = 5
