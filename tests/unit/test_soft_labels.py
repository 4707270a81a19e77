"""Soft pseudo-labels: sharpening, the soft targets of a batch and the soft cross-entropy, each by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.errors import ConfigError
from engine.samples import sharpen
from engine.train.batch import soft_targets
from engine.train.losses import soft_ce, weighted_ce


def test_sharpen_by_hand() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    # T = 0.5 squares and renormalises: [0.25, 0.09, 0.04] / 0.38 and [0.01, 0.01, 0.64] / 0.66
    np.testing.assert_allclose(sharpen(p, 0.5), [[0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38], [1 / 66, 1 / 66, 64 / 66]],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(sharpen(p, 1.0), p, rtol=1e-6)
    assert sharpen(p, 0.01).argmax(1).tolist() == [0, 2] and sharpen(p, 0.01).max() > 0.999
    assert sharpen(p, 0.5).dtype == np.float32


def test_soft_ce_by_hand_and_equal_to_weighted_ce_for_one_hot_targets() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    target = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    w = torch.tensor([1.0, 0.5])
    lse0, lse1 = math.log(math.e + 2), math.log(math.exp(2) + 2)
    row0 = -(0.7 * (1 - lse0) + 0.2 * (0 - lse0) + 0.1 * (0 - lse0))
    row1 = -(0 - lse1)
    assert float(soft_ce(logits, target, w)) == pytest.approx((1.0 * row0 + 0.5 * row1) / 2, rel=1e-6)
    y = torch.tensor([2, 1])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert float(soft_ce(logits, one_hot, w)) == pytest.approx(float(weighted_ce(logits, y, w)), rel=1e-6)


def test_batch_soft_targets_keep_hard_rows_with_label_smoothing() -> None:
    probs = np.array([0.6, 0.3, 0.1], dtype="<f4")
    batch = {"target": np.array([probs.tobytes(), b""], dtype=object)}
    t, n = soft_targets(batch, torch.tensor([0, 2]), 3, smoothing=0.1)
    assert n == 1
    np.testing.assert_allclose(t.numpy(), [[0.6, 0.3, 0.1], [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]], rtol=1e-6)
    assert soft_targets({"target": np.array([b"", b""], dtype=object)}, torch.tensor([0, 1]), 3) is None
    assert soft_targets({"label": np.array([0])}, torch.tensor([0]), 3) is None
    with pytest.raises(ConfigError, match="holds 8 bytes, not 3 float32"):
        soft_targets({"target": np.array([probs[:2].tobytes()], dtype=object)}, torch.tensor([0]), 3)


def test_soft_temperature_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"train\.soft_temperature must be positive, got 0"):
        load_config([], ["train.soft_temperature=0"])
