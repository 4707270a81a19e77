"""ABAW2021 sequence members (engine.models.sequence, engine.train.temporal): windows, ensembles, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.models.factory import create_model
from engine.models.sequence import (
    TemporalHead,
    ensemble,
    member_probs,
    sequence_predict,
    single_frame_probs,
    window_starts,
)
from engine.train.temporal import fit_member, training_windows

C, D = 5, 12


def _heads() -> dict[str, TemporalHead]:
    torch.manual_seed(0)
    return {k: TemporalHead(k, D, C, hidden=16, max_len=8).eval() for k in ("gru", "transformer")}


@pytest.mark.parametrize(
    ("length", "window", "starts"),
    [
        (1, 8, [0]),
        (8, 8, [0]),
        (9, 8, [0, 1]),
        (20, 8, [0, 4, 8, 12]),
        (21, 8, [0, 4, 8, 12, 13]),
        (5, 1, [0, 1, 2, 3, 4]),
    ],
)
def test_window_starts_cover_every_frame_with_half_overlap(length, window, starts):
    got = window_starts(length, window)
    assert got == starts
    covered = np.zeros(length, bool)
    for s in got:
        covered[s : s + min(window, length)] = True
    assert covered.all()


def test_heads_map_windows_to_per_frame_logits():
    for head in _heads().values():
        assert head(torch.randn(3, 8, D)).shape == (3, 8, C)
        assert head(torch.randn(2, 1, D)).shape == (2, 1, C)


def test_member_probs_is_the_mean_over_the_windows_holding_each_frame():
    head = _heads()["gru"]
    feats = np.random.default_rng(0).normal(size=(12, D)).astype(np.float32)
    got = member_probs(head, feats, window=8)  # windows start at 0 and 4
    with torch.no_grad():
        a = head(torch.from_numpy(feats[0:8])[None])[0].softmax(-1).numpy()
        b = head(torch.from_numpy(feats[4:12])[None])[0].softmax(-1).numpy()
    want = np.concatenate([a[:4], (a[4:] + b[:4]) / 2, b[4:]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)


def test_ensemble_is_the_weighted_mean_of_cnn_and_members():
    rng = np.random.default_rng(1)
    p = [rng.dirichlet(np.ones(C), size=6).astype(np.float32) for _ in range(3)]
    probs, stack = ensemble(p[0], {"gru": p[1], "transformer": p[2]}, (2.0, 1.0, 1.0))
    assert stack.shape == (6, 3, C)
    np.testing.assert_allclose(probs, 0.5 * p[0] + 0.25 * p[1] + 0.25 * p[2], atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    eq, _ = ensemble(p[0], {"gru": p[1]}, None)
    np.testing.assert_allclose(eq, (p[0] + p[1]) / 2, atol=1e-6)


def test_sequence_predict_orders_by_frame_and_treats_rows_without_video_as_single_frames():
    heads = _heads()
    rng = np.random.default_rng(2)
    n = 11
    feats = rng.normal(size=(n, D)).astype(np.float32)
    cnn = rng.dirichlet(np.ones(C), size=n).astype(np.float32)
    videos = ["a"] * 6 + ["b"] * 3 + [None, None]
    frames = [5, 1, 3, 2, 6, 4, 10, 30, 20, None, 7]
    probs, stack = sequence_predict(heads, cnn, feats, videos, frames, window=4, weights=None)
    assert probs.shape == (n, C) and stack.shape == (n, 3, C)
    np.testing.assert_allclose(stack[:, 0], cnn)  # member 0 is the CNN itself
    order_a = [1, 3, 2, 5, 0, 4]  # rows of video a sorted by frame
    for m, (name, head) in enumerate(heads.items(), start=1):
        np.testing.assert_allclose(stack[order_a, m], member_probs(head, feats[order_a], 4), atol=1e-6)
        np.testing.assert_allclose(
            stack[[9, 10], m], single_frame_probs(head, feats[[9, 10]]), atol=1e-6, err_msg=name
        )
    # input order does not matter: a permutation of the rows permutes the output
    perm = rng.permutation(n)
    p2, _ = sequence_predict(
        heads, cnn[perm], feats[perm], [videos[i] for i in perm], [frames[i] for i in perm], window=4, weights=None
    )
    np.testing.assert_allclose(p2, probs[perm], atol=1e-6)


def test_training_windows_match_scoring_windows():
    videos = ["v"] * 10 + [None] + ["w"] * 3
    frames = [*range(10, 0, -1), None, 3, 1, 2]
    wins = training_windows(videos, frames, window=4)
    assert [w.tolist() for w in wins] == [[10], [9, 8, 7, 6], [7, 6, 5, 4], [5, 4, 3, 2], [3, 2, 1, 0], [12, 13, 11]]


def test_fit_member_learns_a_label_that_only_the_window_reveals():
    """Frame features are noise except the first frame of each window, which carries the window's label: a
    per-frame model cannot beat chance on the other frames, a sequence member can."""
    rng = np.random.default_rng(0)
    n_win, t = 96, 6
    labels = rng.integers(0, 2, size=n_win)
    feats = rng.normal(size=(n_win, t, D)).astype(np.float32)
    feats[:, 0, 0] = np.where(labels == 1, 3.0, -3.0)
    feats = feats.reshape(-1, D)
    y = np.repeat(labels, t).astype(np.int64)
    windows = [np.arange(i * t, (i + 1) * t) for i in range(n_win)]
    torch.manual_seed(0)
    head = TemporalHead("gru", D, 2, hidden=16, max_len=t)
    fit = fit_member(head, feats, y, windows, epochs=60, lr=3e-3, seed=0)
    assert fit["accuracy"] > 0.9, fit


def test_model_with_temporal_members_returns_features_and_checks_its_config():
    cfg = ModelConfig(name="tiny_cnn", temporal=("gru", "transformer"), temporal_hidden=16, temporal_window=4)
    model = create_model(cfg, 7).eval()
    out = model(torch.zeros(2, 1, 48, 48))
    assert out["logits"].shape == (2, 7) and out["features"].shape[0] == 2
    assert set(model.temporal) == {"gru", "transformer"}
    for bad in (
        {"temporal": ("lstm",)},
        {"temporal": ("gru", "gru")},
        {"temporal": ("gru",), "temporal_weights": (1.0,)},
        {"temporal": ("gru",), "temporal_window": 0},
    ):
        with pytest.raises(ConfigError):
            ModelConfig(**bad)
