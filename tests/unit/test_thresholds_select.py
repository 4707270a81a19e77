"""The select stage's per-class arithmetic (no Ray): quotas with exact integer ratio cap, floor repeats, cut bins."""

from __future__ import annotations

import numpy as np

from engine.config import SelectConfig
from engine.stages.select import HIST_BINS, cut_bins, quotas, repeats


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
