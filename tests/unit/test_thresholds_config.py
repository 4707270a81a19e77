"""ThresholdConfig exposes every policy parameter; the threshold stage passes them through into thresholds.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engine.config import ThresholdConfig, load_config
from engine.errors import ConfigError
from engine.io import fs
from engine.labels import get_label_space
from engine.stages.base import StageContext, StageResult
from engine.stages.threshold import ThresholdStage, build_policy
from engine.stats import ScoreStats
from engine.thresholds import REGISTRY, FlexMatchPolicy, FreeMatchPolicy, get_policy

RUNTIME = {"num_classes", "num_unlabelled"}
"""Parameters the engine fills in (label space size, pool size), not the user."""
BASIC7 = get_label_space("basic7")


def test_every_policy_parameter_is_a_config_field_and_every_field_is_used() -> None:
    fields = {f.name for f in dataclasses.fields(ThresholdConfig)}
    declared = {n: set(cls.param_names()) - RUNTIME for n, cls in REGISTRY.items()}
    for name, params in declared.items():
        assert params <= fields, f"{name}: {sorted(params - fields)} missing from ThresholdConfig"
    assert fields - {"policy"} == set().union(*declared.values())


def test_yaml_values_reach_the_policy(tmp_path: Path) -> None:
    yml = tmp_path / "t.yaml"
    yml.write_text("threshold:\n  policy: softmatch\n  momentum: 0.9\n  n_sigma: 3\n  uniform_align: false\n")
    cfg = load_config([yml], ["threshold.never_label=Surprise"])
    assert build_policy(cfg.threshold, BASIC7).params() == {
        "momentum": 0.9,
        "uniform_align": False,
        "n_sigma": 3.0,
        "num_classes": 7,
        "never_label": [6],
    }
    free = build_policy(dataclasses.replace(cfg.threshold, policy="freematch", fairness_weight=0.001), BASIC7)
    assert free.params() == {"momentum": 0.9, "fairness_weight": 0.001, "num_classes": 7, "never_label": [6]}
    assert isinstance(free, FreeMatchPolicy) and free.use_fairness
    flex = build_policy(dataclasses.replace(cfg.threshold, policy="flexmatch", warmup=False), BASIC7)
    assert flex.params() == {
        "tau": 0.95,
        "mapping": "convex",
        "warmup": False,
        "num_unlabelled": None,
        "num_classes": 7,
        "never_label": [6],
    }


def test_flexmatch_has_no_floor_and_freematch_checks_fairness() -> None:
    with pytest.raises(ConfigError, match=r"tau_min=0\.3; use policy dtm_r"):
        FlexMatchPolicy(tau_min=0.3)
    assert FlexMatchPolicy(tau=0.9, num_classes=2).thresholds().tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="fairness_weight"):
        get_policy("freematch", fairness_weight=-1.0)
    assert not FreeMatchPolicy().use_fairness


def _row(c: int, conf: float) -> list[float]:
    return [conf if j == c else (1 - conf) / 6 for j in range(7)]


def test_threshold_stage_writes_every_parameter_and_exact_thresholds(tmp_path: Path) -> None:
    probs = np.array([_row(0, 0.9)] * 4 + [_row(1, 0.85)] * 2 + [_row(2, 0.5), _row(6, 0.99)])
    cfg = ThresholdConfig(
        policy="dtm_r", tau=0.8, tau_min=0.3, mapping="linear", warmup=False, never_label=("Surprise",)
    )
    base = load_config(
        [], [f"storage.root={tmp_path}", "sources.fer.format=fer2013", "sources.fer.path=x", "campaign.labelled=[fer]"]
    )
    ctx = StageContext(
        dataclasses.replace(base, threshold=cfg), round=1, upstream={"score": StageResult("score", "abc")}
    )
    lay = ctx.round_layout
    fs.write_json(lay.score_stats, ScoreStats.from_probs(probs).to_json())
    res = ThresholdStage(ctx).execute()
    doc = fs.read_json(lay.thresholds)
    # sigma = #{conf >= 0.8} per class = [4, 2, 0, ..., 1]; beta = sigma / 4; T = max(0.3, 0.8 * beta); Surprise never.
    assert doc["thresholds"] == [0.8, 0.4, 0.3, 0.3, 0.3, 0.3, None]
    assert doc["thresholds_by_class"]["Anger"] == 0.4
    assert doc["params"] == {
        "tau": 0.8,
        "tau_min": 0.3,
        "mapping": "linear",
        "warmup": False,
        "num_unlabelled": None,
        "num_classes": 7,
        "never_label": [6],
    }
    assert doc["config"] == {**dataclasses.asdict(cfg), "never_label": ["Surprise"]}
    assert doc["state"] == {"beta": [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.25], "cache": None}
    assert doc["passing_counts"] == dict(zip(BASIC7.classes, [4, 2, 1, 0, 0, 0, 0], strict=True))
    assert doc["pred_counts"] == dict(zip(BASIC7.classes, [4, 2, 1, 0, 0, 0, 1], strict=True))
    assert (doc["pool"], doc["bins"]) == (8, 1000)
    assert res.counts == {"pool": 8, "passing": 7}
    assert fs.read_json(lay.threshold_dir + "/state.json")["state"] == doc["state"]
