"""The select stage's per-class arithmetic (no Ray): quotas with exact integer ratio cap, floor repeats, cut bins,
the policies' per-row weights (``select.weighting: policy``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.config import SelectConfig
from engine.errors import ConfigError
from engine.stages.select import HIST_BINS, conf_bin, cut_bins, kept_from, quotas, repeats


def test_ratio_cap_is_exact_integer_arithmetic() -> None:
    # 22 * (30 / 44) is 14.999999999999998 in floating point; the exact floor is 15.
    k, steps = quotas(np.array([22, 22]), np.array([10, 20]), SelectConfig(max_unlabelled_ratio=1.0))
    assert k.tolist() == [15, 15]
    assert steps == {"passed_threshold": [22, 22], "after_class_caps": [22, 22], "after_ratio_cap": [15, 15]}


def test_caps_apply_in_order() -> None:
    cfg = SelectConfig(cap_per_class=50, cap_multiple_of_labelled=2.5, max_unlabelled_ratio=3.0)
    k, steps = quotas(np.array([100, 40, 7, 0]), np.array([30, 3, 10, 1]), cfg)
    # class caps: min(100, 50, 75) = 50, min(40, 50, 7) = 7, min(7, 50, 25) = 7, 0; limit = floor(3 * 44) = 132 >= 64
    assert steps["after_class_caps"] == [50, 7, 7, 0]
    assert k.tolist() == [50, 7, 7, 0]
    k2, _ = quotas(np.array([100, 40, 7, 0]), np.array([30, 3, 10, 1]), SelectConfig(max_unlabelled_ratio=0.5))
    assert k2.tolist() == [100 * 22 // 147, 40 * 22 // 147, 7 * 22 // 147, 0] == [14, 5, 1, 0]


def test_floor_repeats() -> None:
    assert repeats(np.array([0, 1, 3, 10, 11]), 10).tolist() == [1, 10, 4, 1, 1]
    assert repeats(np.array([0, 1, 3]), 0).tolist() == [1, 1, 1]


def test_cut_bins_top_k_per_class() -> None:
    hist = np.zeros((3, HIST_BINS), dtype=np.int64)
    hist[0, [HIST_BINS - 1, 100, 50]] = [2, 5, 9]
    hist[1, 7] = 4
    cut, take = cut_bins(hist, np.array([4, 4, 0]))
    # class 0: 2 rows in the top bin, then 2 of the 5 rows of bin 100; class 1: its whole bin 7; class 2: nothing.
    assert cut.tolist() == [100, 7, HIST_BINS]
    assert take.tolist() == [2, 4, 0]


def test_kept_from_says_when_the_cap_not_the_threshold_decides() -> None:
    """Threshold 0.5 for all; cap 2 per class. Class 0 passes 4 rows and keeps its 2 most confident (0.9, 0.8):
    capped, kept from the bin of 0.8, floor(0.8 * 65536) / 65536 = 52428 / 65536 = 0.79998779... -> 0.799987.
    Class 1 passes one row (0.55): not capped, kept from 36044 / 65536 = 0.54998779... -> 0.549987. Class 2 passes
    nothing; class 3 passes one row that a cap of 0 drops."""
    conf = [np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.55]), np.array([]), np.array([0.7])]
    hist = np.zeros((4, HIST_BINS), dtype=np.int64)
    for j, c in enumerate(conf):
        np.add.at(hist[j], conf_bin(c.astype(np.float32)), 1)
    passing = hist.sum(1)
    k = np.minimum(passing, [2, 2, 2, 0])
    cut, _ = cut_bins(hist, k)
    got = [kept_from(int(cut[j]), int(passing[j]), int(k[j])) for j in range(4)]
    assert got == [
        {"kept_from": 0.799987, "capped": True},
        {"kept_from": 0.549987, "capped": False},
        {"kept_from": None, "capped": False},
        {"kept_from": None, "capped": True},
    ]


def test_softmatch_row_weights_and_admission_by_hand() -> None:
    """Offline SoftMatch state mu 0.6, var 0.09, n_sigma 2: weight exp(-(conf - 0.6)^2 / 0.045) below mu, 1 above;
    the weight reaches 0.5 at 0.6 - 0.15 * sqrt(2 ln 2) = 0.42339; never-labelled class 2 weighs 0 and never enters."""
    from engine.stats import ScoreStats
    from engine.thresholds.softmatch import SoftMatchPolicy

    p = SoftMatchPolicy(num_classes=3, never_label=(2,))
    p.load_state_dict(
        {"policy": "softmatch", "params": p.params(), "state": {"mu": 0.6, "var": 0.09, "p_model": None}}
    )
    w = p.row_weights(np.array([0, 1, 0, 2]), np.array([0.9, 0.6, 0.3, 0.9]))
    np.testing.assert_allclose(w, [1.0, 1.0, math.exp(-0.09 / 0.045), 0.0], rtol=1e-6)
    np.testing.assert_allclose(p.admission(0.5), [0.6 - 0.15 * math.sqrt(2 * math.log(2)), 0.42339, np.inf], atol=1e-5)
    np.testing.assert_array_equal(p.admission(0.0), [0.0, 0.0, np.inf])
    np.testing.assert_array_equal(p.admission(1.0), [0.6, 0.6, np.inf])
    # the online state (an alignment p_model) cannot weigh rows from their confidence alone
    online = SoftMatchPolicy(num_classes=3)
    online.update(np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]]))
    with pytest.raises(ConfigError, match="offline state"):
        online.row_weights(np.array([0]), np.array([0.5]))
    # fit clears it: offline weights again
    online.fit(ScoreStats.from_probs(np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]]), bins=100))
    assert online.row_weights(np.array([1]), np.array([0.99]))[0] == 1.0


def test_hard_policy_row_weights_are_its_mask() -> None:
    from engine.thresholds.fixed import FixedPolicy

    p = FixedPolicy(tau=0.8, num_classes=3, never_label=(1,))
    np.testing.assert_array_equal(
        p.row_weights(np.array([0, 0, 1, 2]), np.array([0.8, 0.79, 0.99, 0.95])), [1, 0, 0, 1]
    )
    np.testing.assert_array_equal(p.admission(0.5), p.thresholds())


def test_precision_target_thresholds_by_hand() -> None:
    """Val rows (pred, conf, correct?) of five classes, target precision 0.75, at least 2 rows, floor 0.5, tau 0.95.

    Class 0, by confidence: .99 ✓ .95 ✓ .9 ✗ .9 ✓ .8 ✓ .7 ✗ .6 ✗ .5 ✓: precision 1, 1, (tie) 3/4, 4/5, 4/6, 4/7,
    5/8, so the lowest admissible t is 0.8 (5 rows, 0.8). Class 1 (.9 ✗ .85 ✗ .6 ✓) never reaches 0.75: tau. Class
    2 (all right, lowest 0.45) sits at the floor 0.5. Class 3 has one row (< min_support): tau. Class 4 (.9 ✓ .9 ✗
    .9 ✗ .8 ✓): the tie at 0.9 is admitted whole (1/3), so no t qualifies: tau (0.9 if ties were split).
    """
    import json

    from engine.stats import ScoreStats
    from engine.thresholds.base import to_jsonable
    from engine.thresholds.precision import PrecisionTargetPolicy

    rows = [
        (0, 0.99, 1), (0, 0.95, 1), (0, 0.9, 0), (0, 0.9, 1), (0, 0.8, 1), (0, 0.7, 0), (0, 0.6, 0), (0, 0.5, 1),
        (1, 0.9, 0), (1, 0.85, 0), (1, 0.6, 1),
        (2, 0.7, 1), (2, 0.65, 1), (2, 0.55, 1), (2, 0.45, 1),
        (3, 0.99, 1),
        (4, 0.9, 1), (4, 0.9, 0), (4, 0.9, 0), (4, 0.8, 1),
    ]  # fmt: skip
    pred = np.array([r[0] for r in rows])
    label = np.where(np.array([r[2] for r in rows]) == 1, pred, (pred + 1) % 5)
    p = PrecisionTargetPolicy(target_precision=0.75, min_support=2, tau=0.95, tau_min=0.5, num_classes=5)
    p.set_reference(pred, np.array([r[1] for r in rows]), label)
    pool = ScoreStats.from_probs(np.eye(5)[[0, 1, 2, 3, 4]] * 0.9 + 0.02, bins=100)
    np.testing.assert_allclose(p.fit(pool), [0.8, 0.95, 0.5, 0.95, 0.95])
    state = json.loads(json.dumps(to_jsonable(p.state_dict()), allow_nan=False))
    assert state["state"]["val_support"] == [5, 0, 4, 0, 0]
    assert state["state"]["val_precision"] == [0.8, None, 1.0, None, None]
    again = PrecisionTargetPolicy(target_precision=0.75, min_support=2, tau=0.95, tau_min=0.5, num_classes=5)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.thresholds(), p.thresholds())
    assert "precision >= 0.75 over >= 2 rows" in p.offline_rule()
    with pytest.raises(ConfigError, match="needs the teacher's predictions"):
        PrecisionTargetPolicy(num_classes=5).fit(pool)
