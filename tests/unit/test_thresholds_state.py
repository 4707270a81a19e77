"""Every policy: output shapes, determinism, and save/restore (through JSON) giving identical later outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.stats import ScoreStats
from engine.thresholds import REGISTRY, ThresholdPolicy, available_policies, get_policy, to_jsonable

C, N_U, B = 5, 60, 12
PARAMS: dict[str, Any] = {
    "tau": 0.7,
    "tau_min": 0.3,
    "momentum": 0.9,
    "quantile": 0.6,
    "top_k": 10,
    "num_classes": C,
    "num_unlabelled": N_U,
    "never_label": [4],
}
ONLINE = [n for n in available_policies() if REGISTRY[n].supports_online]


def _batches(seed: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.dirichlet(np.full(C, 0.3), size=B), rng.integers(0, N_U, size=B)) for _ in range(steps)]


def _run(pol: ThresholdPolicy, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    out = []
    for probs, idx in batches:
        out.append(pol.step(probs, idx))
        out.append(pol.thresholds())
        out.append(pol.mask(probs))
    return out


def _json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(to_jsonable(state)))


def test_online_policy_set() -> None:
    assert ONLINE == ["dtm_r", "fixed", "flexmatch", "freematch", "softmatch"]


@pytest.mark.parametrize("name", ONLINE)
def test_online_save_restore_gives_identical_outputs(name: str) -> None:
    pol = get_policy(name, PARAMS)
    _run(pol, _batches(0, 6))
    saved = _json_round_trip(pol.state_dict())
    later = _batches(1, 4)
    expected = _run(pol, later)
    restored = get_policy(name, PARAMS)
    restored.load_state_dict(saved)
    for a, b in zip(_run(restored, later), expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ONLINE)
def test_online_shapes_and_determinism(name: str) -> None:
    batches = _batches(2, 5)
    a, b = _run(get_policy(name, PARAMS), batches), _run(get_policy(name, PARAMS), batches)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for weights, thresholds, mask in zip(a[0::3], a[1::3], a[2::3], strict=True):
        assert weights.shape == (B,) and weights.dtype == np.float32
        assert mask.shape == (B,) and set(np.unique(mask)) <= {0.0, 1.0}
        assert thresholds.shape == (C,) and thresholds.dtype == np.float64
        assert thresholds[4] == np.inf  # never_label
        assert ((weights >= 0) & (weights <= 1)).all()


def _offline(name: str) -> ThresholdPolicy:
    """The policy ``name``; one fitted on a labelled reference too (``precision``) gets a seeded one."""
    pol = get_policy(name, PARAMS)
    if pol.needs_reference:
        rng = np.random.default_rng(4)
        probs = rng.dirichlet(np.full(C, 0.3), size=400)
        label = np.where(rng.random(400) < probs.max(1), probs.argmax(1), rng.integers(0, C, 400))
        pol.set_reference(probs.argmax(1), probs.max(1), label)
    return pol


@pytest.mark.parametrize("name", available_policies())
def test_offline_fit_shape_determinism_and_restore(name: str) -> None:
    rng = np.random.default_rng(3)
    stats = ScoreStats.from_probs(rng.dirichlet(np.full(C, 0.3), size=500), bins=100)
    pol = _offline(name)
    t = pol.fit(stats)
    assert t.shape == (C,) and t.dtype == np.float64 and t[4] == np.inf
    assert np.isfinite(t[:4]).all() and (t[:4] >= 0).all() and (t[:4] <= 1).all()
    np.testing.assert_array_equal(t, _offline(name).fit(stats))
    np.testing.assert_array_equal(pol.thresholds(), t)
    restored = get_policy(name, PARAMS)
    restored.load_state_dict(_json_round_trip(pol.state_dict()))
    np.testing.assert_array_equal(restored.thresholds(), t)
    probs = rng.dirichlet(np.full(C, 0.3), size=B)
    np.testing.assert_array_equal(restored.weights(probs), pol.weights(probs))


def test_load_state_rejects_another_policy_or_other_params() -> None:
    pol = get_policy("flexmatch", PARAMS)
    with pytest.raises(ConfigError, match="saved by policy 'flexmatch'"):
        get_policy("dtm_r", PARAMS).load_state_dict(pol.state_dict())
    with pytest.raises(ConfigError, match="saved with params"):
        get_policy("flexmatch", PARAMS, tau=0.9).load_state_dict(pol.state_dict())
