"""Unit tests of the threshold registry, shared helpers, and the fixed, quantile and top-K policies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds import (
    NEVER,
    FixedPolicy,
    QuantilePolicy,
    TopKPolicy,
    UnknownPolicy,
    apply_thresholds,
    available_policies,
    get_policy,
    masked_mean,
    thresholds_from_json,
    thresholds_to_json,
)

TOY = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], dtype=np.float64
)
REPO = Path(__file__).resolve().parents[2]


def test_registry_names() -> None:
    assert available_policies() == (
        "dtm_r",
        "fixed",
        "flexmatch",
        "freematch",
        "precision",
        "quantile",
        "softmatch",
        "topk",
    )


def test_unknown_policy_names_the_closest() -> None:
    with pytest.raises(UnknownPolicy, match="did you mean 'flexmatch'") as err:
        get_policy("flexmach")
    assert isinstance(err.value, ConfigError)
    assert "valid: dtm_r, fixed, flexmatch" in str(err.value)


def test_get_policy_passes_only_declared_params() -> None:
    params = {"policy": "x", "tau": 0.8, "tau_min": 0.4, "mapping": "linear", "quantile": 0.3, "top_k": 5}
    fixed = get_policy("fixed", params, num_classes=3)
    assert fixed.params() == {"tau": 0.8, "num_classes": 3, "never_label": []}
    dtm = get_policy("dtm_r", params, num_classes=3, num_unlabelled=10)
    assert dtm.params() == {
        "tau": 0.8,
        "tau_min": 0.4,
        "mapping": "linear",
        "warmup": None,
        "num_unlabelled": 10,
        "num_classes": 3,
        "never_label": [],
    }
    flex = get_policy("flexmatch", params, tau=0.9)
    assert "tau_min" not in flex.params() and flex.params()["tau"] == 0.9
    assert get_policy("quantile", params).params() == {
        "quantile": 0.3,
        "tau_min": 0.4,
        "num_classes": None,
        "never_label": [],
    }


def test_get_policy_accepts_threshold_config() -> None:
    from engine.config import ThresholdConfig

    cfg = ThresholdConfig()
    pol = get_policy(cfg.policy, cfg, num_classes=7)
    assert pol.name == cfg.policy
    assert pol.params()["tau"] == cfg.tau


def test_never_label_must_be_indices_in_range() -> None:
    with pytest.raises(ConfigError, match="class indices"):
        FixedPolicy(never_label=["Other"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"never_label indices \[3\]"):
        FixedPolicy(never_label=[3]).fit(ScoreStats.from_probs(TOY, 10))


def test_never_label_gives_inf_and_rejects_rows() -> None:
    pol = FixedPolicy(tau=0.5, never_label=[2])
    t = pol.fit(ScoreStats.from_probs(TOY, 10))
    np.testing.assert_array_equal(t, [0.5, 0.5, NEVER])
    np.testing.assert_array_equal(pol.mask(TOY), [1, 1, 0, 0, 1])


def test_thresholds_json_writes_null_for_never() -> None:
    values = thresholds_to_json(np.array([0.5, np.inf, 0.95]))
    assert values == [0.5, None, 0.95]
    assert json.dumps(values) == "[0.5, null, 0.95]"
    np.testing.assert_array_equal(thresholds_from_json(values), [0.5, np.inf, 0.95])


def test_masked_mean_divides_by_the_whole_batch() -> None:
    # Reference 2.6: L_u is divided by mu*B, not by the number of accepted samples.
    assert masked_mean([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 1.0, 0.0]) == 1.0
    assert masked_mean([1.0, 2.0], [0.0, 0.0]) == 0.0
    assert masked_mean([], []) == 0.0


def test_fixed_mask_is_elementwise_and_stateless() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.4), size=200)
    probs[0] = [0.95, 0.05, 0.0, 0.0]  # exactly tau passes
    pol = FixedPolicy(tau=0.95, num_classes=4)
    expected = (probs.max(1) >= 0.95).astype(np.float32)
    assert pol.step(probs, np.arange(200)).dtype == np.float32
    for _ in range(3):
        np.testing.assert_array_equal(pol.step(probs), expected)
    assert expected[0] == 1.0
    np.testing.assert_array_equal(pol.thresholds(), [0.95] * 4)
    assert pol.state_dict()["state"] == {}
    np.testing.assert_array_equal(apply_thresholds(probs, pol.thresholds()), expected)


def test_quantile_policy_toy() -> None:
    stats = ScoreStats.from_probs(TOY, bins=10)
    np.testing.assert_array_equal(QuantilePolicy(quantile=0.5).fit(stats), [0.5, 0.8, 0.9])
    np.testing.assert_array_equal(QuantilePolicy(quantile=0.5, tau_min=0.6).fit(stats), [0.6, 0.8, 0.9])
    four = ScoreStats.from_probs(np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]]), bins=10)
    np.testing.assert_array_equal(QuantilePolicy(quantile=0.5).fit(four), [0.6, 0.7, 1.0, 1.0])


def test_topk_policy_toy() -> None:
    stats = ScoreStats.from_probs(TOY, bins=10)
    np.testing.assert_array_equal(TopKPolicy(top_k=1).fit(stats), [0.7, 0.8, 0.9])
    np.testing.assert_array_equal(TopKPolicy(top_k=2).fit(stats), [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(TopKPolicy(top_k=2, tau_min=0.3).fit(stats), [0.5, 0.3, 0.3])


def test_topk_keeps_at_least_k_per_class() -> None:
    rng = np.random.default_rng(4)
    stats = ScoreStats.from_probs(rng.dirichlet(np.full(5, 0.3), size=2000), bins=100)
    t = TopKPolicy(top_k=50).fit(stats)
    kept = np.array([stats.count_at_least(t[c])[c] for c in range(5)])
    assert (kept >= np.minimum(50, stats.pred_counts)).all()
    above = np.array([stats.count_at_least(t[c] + 0.01)[c] for c in range(5)])
    assert (above < 50).all()  # one bin higher would keep fewer than K


def test_offline_only_policies_refuse_online_use() -> None:
    for pol in (QuantilePolicy(num_classes=3), TopKPolicy(num_classes=3)):
        with pytest.raises(ConfigError, match="offline-only"):
            pol.update(TOY, np.arange(5))
        with pytest.raises(ConfigError, match="call fit"):
            pol.thresholds()


def test_fit_rejects_empty_or_mismatched_stats() -> None:
    with pytest.raises(ConfigError, match="n=0"):
        FixedPolicy().fit(ScoreStats.zero(3, 10))
    with pytest.raises(ConfigError, match="num_classes=4"):
        FixedPolicy(num_classes=4).fit(ScoreStats.from_probs(TOY, 10))


def test_threshold_modules_import_no_ray_or_torch() -> None:
    code = (
        "import sys, engine.stats, engine.thresholds; "
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PYTHONPATH": str(REPO)}, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
