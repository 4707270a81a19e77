"""Seed methods (issue 8): CFC-SP cascade and smoothing, ESR disagreement and diversity, VA head, CCC and gating."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from engine.config import ModelConfig, SelectConfig
from engine.disagreement import branch_disagreement
from engine.errors import ConfigError
from engine.io import fs
from engine.labels import COARSE5, NEGATIVE4, get_label_space
from engine.metrics import ccc
from engine.models.cascade import CascadeHead, cascade_map, combine_cascade
from engine.models.factory import create_model
from engine.models.heads import outputs_to_probs
from engine.smoothing import count_label_changes, smooth_probs
from engine.train.losses import LossWeights, SupervisedLoss, ccc_torch, diversity_loss, va_loss, weighted_ce
from engine.va_gate import va_contradicts, valence_bounds

ABAW8 = get_label_space("abaw8")
BASIC7 = get_label_space("basic7")


# ---------------------------------------------------------------- CFC-SP cascade


def test_cascade_map_of_abaw8_and_basic7() -> None:
    m = cascade_map(ABAW8)  # Neutral Anger Disgust Fear Happiness Sadness Surprise Other
    assert m.coarse == COARSE5.classes and m.fine == NEGATIVE4.classes
    assert m.coarse_of == (0, 4, 4, 4, 1, 4, 2, 3)
    assert m.fine_of == (-1, 0, 1, 2, -1, 3, -1, -1)
    b = cascade_map(BASIC7)
    assert b.coarse == ("Neutral", "Happiness", "Surprise", "Negative") and b.coarse_of == (0, 3, 3, 3, 1, 3, 2)
    with pytest.raises(ConfigError, match="Contempt has no coarse/fine place"):
        cascade_map(get_label_space("ferplus8"))


def test_combine_cascade_product_rule_by_hand() -> None:
    p = combine_cascade([[0.1, 0.2, 0.3, 0.0, 0.4]], [[0.5, 0.25, 0.125, 0.125]], cascade_map(ABAW8))
    assert np.allclose(p, [[0.1, 0.2, 0.1, 0.05, 0.2, 0.05, 0.3, 0.0]], atol=1e-12)
    assert p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("space", [ABAW8, BASIC7])
def test_cascade_model_probs_sum_to_one_and_equal_product_rule(space) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(head="cascade"), len(space), label_space=space).eval()
    with torch.no_grad():
        out = model(torch.randn(5, 1, 48, 48))
    probs = out["logits"].softmax(-1).numpy()
    expect = combine_cascade(out["coarse"].softmax(-1).numpy(), out["fine"].softmax(-1).numpy(), cascade_map(space))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6)
    assert np.allclose(probs, expect, atol=1e-6)
    with pytest.raises(ConfigError, match="needs the label space"):
        create_model(ModelConfig(head="cascade"), 8)


def test_cascade_loss_is_coarse_ce_plus_fine_ce_on_negative_rows() -> None:
    torch.manual_seed(1)
    head = CascadeHead(4, ABAW8)
    with torch.no_grad():
        out = head(torch.randn(4, 4))
    y = torch.tensor([0, 1, 5, 4])  # Neutral, Anger, Sadness, Happiness: rows 1 and 2 are Negative
    w = torch.tensor([1.0, 0.5, 1.0, 2.0])
    loss, terms = SupervisedLoss(ModelConfig(head="cascade"), ABAW8, LossWeights(fine=2.0))(out, y, w)
    coarse_y = torch.tensor([0, 4, 4, 1])
    coarse = (w * torch.nn.functional.cross_entropy(out["coarse"], coarse_y, reduction="none")).mean()
    fine_ce = torch.nn.functional.cross_entropy(out["fine"][1:3], torch.tensor([0, 3]), reduction="none")
    fine = (w[1:3] * fine_ce).sum() / 2
    assert float(loss) == pytest.approx(float(coarse + 2.0 * fine), rel=1e-6)
    assert terms == pytest.approx({"coarse": float(coarse), "fine": float(fine)}, rel=1e-6)


# ---------------------------------------------------------------- smooth predicting


@pytest.mark.parametrize("method", ["mean", "ema"])
def test_smoothing_a_constant_sequence_is_the_identity(method: str) -> None:
    p = np.tile(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32), (9, 1))
    frames = np.array([5, 1, 2, 3, 4, 9, 7, 8, 6])
    assert np.array_equal(smooth_probs(p, frames, method=method, window=5), p)


def test_smoothing_a_flickering_step_reduces_label_changes() -> None:
    # true step at frame 10 (class 0 -> class 1) with isolated flips at frames 3, 6, 13 and 16
    labels = np.array([0] * 10 + [1] * 10)
    labels[[3, 6]] = 1
    labels[[13, 16]] = 0
    probs = np.where(labels[:, None] == np.arange(2), 0.6, 0.4).astype(np.float32)
    frames = np.arange(1, 21)
    assert count_label_changes(probs.argmax(1)) == 9
    smoothed = smooth_probs(probs, frames, method="mean", window=5)
    assert count_label_changes(smoothed.argmax(1)) == 1
    assert np.array_equal(smoothed.argmax(1), [0] * 10 + [1] * 10)
    assert np.allclose(smoothed.sum(1), 1.0, atol=1e-6)
    assert count_label_changes(smooth_probs(probs, frames, method="ema", window=5).argmax(1)) < 9


def test_smoothing_window_respects_frame_gaps_and_input_order() -> None:
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    # frames 1, 2 and 10: with window 3 (half 1) frame 10 has no neighbour, frames 1 and 2 average each other
    out = smooth_probs(p[[2, 0, 1]], np.array([10, 1, 2]), window=3)
    assert np.array_equal(out, np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]], dtype=np.float32))
    assert np.array_equal(smooth_probs(p, [1, 2, 3], window=1), p)
    with pytest.raises(ValueError, match="repeat"):
        smooth_probs(p, [1, 1, 2])


# ---------------------------------------------------------------- ESR


def test_disagreement_is_zero_for_identical_branches_and_exact_otherwise() -> None:
    same = np.tile(np.array([0.7, 0.2, 0.1]), (3, 4, 1))
    for method in ("vote_entropy", "variance", "js"):
        assert np.array_equal(branch_disagreement(same, method), np.zeros(3, np.float32))
    split = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    assert branch_disagreement(split, "vote_entropy")[0] == pytest.approx(math.log(2), rel=1e-6)
    assert branch_disagreement(split, "variance")[0] == pytest.approx(0.25)
    assert branch_disagreement(split, "js")[0] == pytest.approx(math.log(2), rel=1e-6)


def test_esr_model_with_identical_branches_has_zero_disagreement() -> None:
    torch.manual_seed(2)
    model = create_model(ModelConfig(head="esr", esr_branches=3, esr_hidden=8), 7).eval()
    for hidden, cls in zip(model.head.hidden[1:], model.head.classifiers[1:], strict=True):
        hidden.load_state_dict(model.head.hidden[0].state_dict())
        cls.load_state_dict(model.head.classifiers[0].state_dict())
    with torch.no_grad():
        out = model(torch.randn(4, 1, 48, 48))
    probs, branch, va = outputs_to_probs(out)
    assert branch is not None and va is None and branch.shape == (4, 3, 7)
    assert np.allclose(probs.numpy(), branch.mean(1).numpy(), atol=1e-6)  # teacher probs = branch mean
    assert np.array_equal(branch_disagreement(branch.numpy(), "vote_entropy"), np.zeros(4, np.float32))
    assert float(diversity_loss(out["branch_features"], gamma=1.0)) == pytest.approx(1.0)


def test_diversity_loss_falls_as_branches_spread() -> None:
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # orthogonal unit features: squared distance 2
    assert float(diversity_loss(f, gamma=0.5)) == pytest.approx(math.exp(-1.0))


# ---------------------------------------------------------------- valence-arousal


def test_ccc_is_one_for_identical_series() -> None:
    x = torch.tensor([0.1, -0.4, 0.7, 0.2])
    assert float(ccc_torch(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert ccc(x.numpy(), x.numpy()) == pytest.approx(1.0)
    target = torch.stack([x, -x], dim=1)
    assert float(va_loss(target.clone(), target)) == pytest.approx(0.0, abs=1e-6)
    target[1:] = float("nan")  # fewer than 2 labelled rows: no VA term
    assert float(va_loss(torch.zeros(4, 2), target)) == 0.0


def test_va_head_is_tanh_bounded_and_adds_the_ccc_term() -> None:
    torch.manual_seed(3)
    model = create_model(ModelConfig(va_head=True), 7)
    with torch.no_grad():
        out = model(torch.randn(6, 1, 48, 48))
    assert out["va"].shape == (6, 2) and bool((out["va"].abs() <= 1).all())
    y, w = torch.arange(6) % 7, torch.ones(6)
    target = torch.tensor([[0.5, 0.1], [-0.5, 0.2], [0.1, -0.3], [float("nan")] * 2, [0.9, 0.9], [-0.9, -0.2]])
    loss, terms = SupervisedLoss(ModelConfig(va_head=True), BASIC7, LossWeights(va=0.5))(out, y, w, target)
    assert float(loss) == pytest.approx(float(weighted_ce(out["logits"], y, w) + 0.5 * va_loss(out["va"], target)))
    assert set(terms) == {"va"}


def test_gating_drops_exactly_the_contradicting_rows() -> None:
    lo, hi = valence_bounds(BASIC7, {"happy": 0.0}, {"Sadness": -0.1, "Anger": 0.0})
    assert lo.tolist() == [-np.inf, -np.inf, -np.inf, -np.inf, 0.0, -np.inf, -np.inf]
    assert hi.tolist() == [np.inf, 0.0, np.inf, np.inf, np.inf, -0.1, np.inf]
    pred = np.array([4, 4, 5, 5, 1, 0, 4, 5])
    val = np.array([-0.2, 0.3, 0.0, -0.5, 0.4, -0.9, np.nan, -0.1])
    assert va_contradicts(pred, val, lo, hi).tolist() == [True, False, True, False, True, False, False, False]
    with pytest.raises(ConfigError, match="lacks"):
        valence_bounds(BASIC7, {"Other": 0.0}, {})


def test_select_guard_applies_disagreement_and_va_gates(tmp_path) -> None:
    from engine.stages.select import _guarded, select_gate

    part, manifest = str(tmp_path / "part.parquet"), str(tmp_path / "manifest.parquet")
    keys = [f"k{i}" for i in range(6)]
    fs.write_parquet(
        part,
        pa.table(
            {
                "key": keys,
                "pred": pa.array([4, 4, 5, 0, 4, 1], pa.int16()),
                "conf": pa.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.9], pa.float32()),
                "disagreement": pa.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.2], pa.float32()),
                "valence": pa.array([0.5, -0.5, 0.5, 0.0, -0.5, -0.3], pa.float32()),
            }
        ),
    )
    fs.write_parquet(
        manifest,
        pa.table(
            {"key": keys, "label": pa.array([-1] * 6, pa.int16()), "leak_with": pa.array([None] * 6, pa.string())}
        ),
    )
    cfg = SelectConfig(max_disagreement=0.5, min_valence={"Happiness": 0.0}, max_valence={"Sadness": 0.0})
    gate = select_gate(cfg, list(BASIC7.classes))
    g = _guarded(part, manifest, frozenset(), np.full(7, 0.5), gate)
    # k1: Happiness with valence < 0; k2: Sadness with valence > 0; k3: disagreement > 0.5; k4 fails the threshold
    assert g["passing"].tolist() == [True, False, False, False, False, True]
    assert (g["gated_disagreement"], g["gated_va"]) == (1, 2)
    assert select_gate(SelectConfig(), list(BASIC7.classes)) is None
    plain = str(tmp_path / "plain.parquet")  # a teacher without a VA head
    fs.write_parquet(plain, fs.read_parquet(part, columns=["key", "pred", "conf"]))
    va_only = select_gate(SelectConfig(min_valence={"Happiness": 0.0}), list(BASIC7.classes))
    with pytest.raises(ConfigError, match=r"no column 'valence'.*needs a VA head"):
        _guarded(plain, manifest, frozenset(), np.full(7, 0.5), va_only)
