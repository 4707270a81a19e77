"""Unit tests of the EMA-based policies: FreeMatch (SAT + SAF) and SoftMatch weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds import FreeMatchPolicy, SoftMatchPolicy, fairness_loss


def test_freematch_starts_at_one_over_c_and_accepts_everything() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.5), size=100)
    pol = FreeMatchPolicy(num_classes=5)
    np.testing.assert_array_equal(pol.thresholds(), np.full(5, 0.2))
    assert pol.time_p == 0.2
    np.testing.assert_array_equal(pol.mask(probs), np.ones(100, np.float32))


def test_freematch_one_step_hand_values() -> None:
    pol = FreeMatchPolicy(momentum=0.5, num_classes=2)
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.52, 0.48]])
    w = pol.step(probs)  # update first, then mask
    tau = 0.5 * 0.5 + 0.5 * (0.8 + 0.6 + 0.52) / 3  # 0.57
    p_model = 0.25 + 0.5 * np.array([1.72, 1.28]) / 3
    assert pol.time_p == pytest.approx(tau, rel=1e-15)
    np.testing.assert_allclose(pol.p_model, p_model, rtol=1e-15)
    np.testing.assert_allclose(pol.label_hist, 0.25 + 0.5 * np.array([2 / 3, 1 / 3]), rtol=1e-15)
    np.testing.assert_allclose(pol.thresholds(), [tau, tau * p_model[1] / p_model[0]], rtol=1e-15)
    np.testing.assert_array_equal(w, [1, 1, 0])  # 0.52 (class 0) < 0.57; 0.6 (class 1) >= 0.4921


def test_freematch_threshold_at_most_tau_with_equality_at_the_top_class() -> None:
    rng = np.random.default_rng(1)
    pol = FreeMatchPolicy(momentum=0.9, num_classes=6)
    for _ in range(20):
        t = pol.update(rng.dirichlet(np.full(6, 0.3), size=32))
        assert (t <= pol.time_p).all()
        assert t[np.argmax(pol.p_model)] == pol.time_p


def test_freematch_ema_converges_on_a_stationary_input() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(4, 0.4), size=50)
    pol = FreeMatchPolicy(momentum=0.9, num_classes=4)
    for _ in range(400):
        pol.update(probs)
    x = probs.max(1).mean()
    assert pol.time_p == pytest.approx(0.9**400 * 0.25 + (1 - 0.9**400) * x, abs=1e-12)
    assert abs(pol.time_p - x) < 1e-12
    np.testing.assert_allclose(pol.p_model, probs.mean(0), atol=1e-12)
    np.testing.assert_allclose(pol.label_hist, np.bincount(probs.argmax(1), minlength=4) / 50, atol=1e-12)


def test_freematch_offline_uses_round_means() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    pol = FreeMatchPolicy()
    t = pol.fit(ScoreStats.from_probs(probs, bins=10))
    mean_conf, p = 3.39 / 5, np.array([1.64, 1.88, 1.48]) / 5
    np.testing.assert_allclose(t, mean_conf * p / p.max(), rtol=1e-14)
    np.testing.assert_allclose(pol.label_hist, [0.6, 0.2, 0.2])


def test_fairness_loss_hand_values() -> None:
    q = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    half = np.array([0.5, 0.5])
    loss = fairness_loss([1, 1, 0], q, half, half)
    assert loss == pytest.approx(0.5 * math.log(0.55 + 1e-12) + 0.5 * math.log(0.45 + 1e-12), rel=1e-12)
    # every masked row predicts class 0: h_bar = [1, 0], inv(0) := 0, so b = [1, 0]
    one_class = fairness_loss([1, 0, 0], q, half, half)
    assert one_class == pytest.approx(0.5 * math.log(1e-12), rel=1e-9)
    assert fairness_loss([0, 0, 0], q, half, half) == 0.0


def test_softmatch_starts_with_unit_weights() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(7, 0.5), size=100)
    pol = SoftMatchPolicy(num_classes=7)
    assert pol.mu == 1 / 7 and pol.var == 1.0 and pol.p_model is None
    np.testing.assert_array_equal(pol.weights(probs), np.ones(100, np.float32))
    w = pol.step(probs)
    assert (w > 0.99).all() and (w <= 1.0).all()


def test_softmatch_one_step_hand_values_without_alignment() -> None:
    pol = SoftMatchPolicy(momentum=0.5, uniform_align=False, num_classes=2)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    w = pol.step(probs)
    conf = np.array([0.9, 0.6, 0.7])
    mu, var = 0.5 * 0.5 + 0.5 * conf.mean(), 0.5 * 1.0 + 0.5 * conf.var(ddof=1)
    assert pol.mu == pytest.approx(mu, rel=1e-15) and pol.var == pytest.approx(var, rel=1e-15)
    np.testing.assert_allclose(w, [1.0, math.exp(-((0.6 - mu) ** 2) / (2 * var / 4)), 1.0], rtol=1e-6)
    np.testing.assert_array_equal(pol.mask(probs), [1, 0, 1])
    np.testing.assert_array_equal(pol.thresholds(), [mu, mu])


def test_softmatch_uniform_alignment() -> None:
    pol = SoftMatchPolicy(momentum=0.5, num_classes=2)
    probs = np.array([[0.9, 0.1], [0.7, 0.3]])
    pol.update(probs)
    np.testing.assert_allclose(pol.p_model, [0.8, 0.2])  # first batch sets p_model
    a = np.array([0.9 * 0.500001 / 0.800001, 0.1 * 0.500001 / 0.200001])
    np.testing.assert_allclose(pol.aligned(probs)[0], a / a.sum(), rtol=1e-12)
    pol.update(np.array([[0.5, 0.5], [0.5, 0.5]]))
    np.testing.assert_allclose(pol.p_model, [0.65, 0.35])


def test_softmatch_weights_in_unit_interval_and_one_above_mu() -> None:
    rng = np.random.default_rng(4)
    pol = SoftMatchPolicy(momentum=0.9, num_classes=5)
    for _ in range(30):
        probs = rng.dirichlet(np.full(5, 0.4), size=32)
        w = pol.step(probs)
        assert ((w > 0) & (w <= 1)).all()
        above = pol.aligned(probs).max(1) >= pol.mu
        np.testing.assert_array_equal(w[above], 1.0)
        assert (w[~above] < 1).all()


def test_softmatch_single_row_batch_keeps_variance() -> None:
    pol = SoftMatchPolicy(momentum=0.5, uniform_align=False, num_classes=2)
    pol.update(np.array([[0.8, 0.2]]))
    assert pol.var == 1.0 and pol.mu == pytest.approx(0.25 + 0.4)


def test_softmatch_offline_and_never_label() -> None:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(3, 0.5), size=400)
    stats = ScoreStats.from_probs(probs, bins=1000)
    pol = SoftMatchPolicy(never_label=[2])
    t = pol.fit(stats)
    assert pol.mu == stats.mean_conf and pol.var == stats.conf_var and pol.p_model is None
    np.testing.assert_array_equal(t, [stats.mean_conf, stats.mean_conf, np.inf])
    w = pol.weights(probs)
    np.testing.assert_array_equal(w[probs.argmax(1) == 2], 0.0)
    np.testing.assert_array_equal(pol.mask(probs), ((probs.max(1) >= pol.mu) & (probs.argmax(1) != 2)))


def test_ema_policies_validate_momentum() -> None:
    with pytest.raises(ConfigError, match="momentum"):
        FreeMatchPolicy(momentum=1.0)
    with pytest.raises(ConfigError, match="momentum"):
        SoftMatchPolicy(momentum=-0.1)
