"""FreeMatch's self-adaptive fairness term in the trainer (torch) equals the numpy reference and only moves the
strong-view predictions."""

from __future__ import annotations

import numpy as np
import torch

from engine.thresholds import fairness_loss as fairness_numpy
from engine.train.losses import fairness_loss


def _case(seed: int, b: int = 16, c: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random(b) > 0.4).astype(np.float32)
    logits = rng.normal(size=(b, c)) * 2
    p_model = rng.dirichlet(np.ones(c))
    label_hist = rng.dirichlet(np.ones(c))
    label_hist[2] = 0.0  # a class never predicted: inv(0) = 0
    return mask, logits, p_model, label_hist


def test_torch_fairness_loss_equals_the_numpy_reference():
    for seed in range(5):
        mask, logits, p_model, label_hist = _case(seed)
        probs = torch.softmax(torch.tensor(logits), dim=1)
        got = fairness_loss(torch.tensor(mask), probs, torch.tensor(p_model), torch.tensor(label_hist))
        want = fairness_numpy(mask, probs.numpy(), p_model, label_hist)
        assert abs(float(got) - want) < 1e-9, (seed, float(got), want)


def test_fairness_gradient_reaches_only_the_masked_strong_logits():
    mask, logits, p_model, label_hist = _case(7)
    x = torch.tensor(logits, requires_grad=True)
    loss = fairness_loss(torch.tensor(mask), torch.softmax(x, dim=1), torch.tensor(p_model), torch.tensor(label_hist))
    loss.backward()
    assert x.grad is not None
    grad_rows = x.grad.abs().sum(1).numpy()
    assert np.all(grad_rows[mask == 0] == 0) and np.all(grad_rows[mask > 0] > 0)


def test_fairness_loss_without_masked_rows_is_a_zero_that_keeps_the_graph():
    x = torch.randn(4, 3, requires_grad=True)
    loss = fairness_loss(torch.zeros(4), torch.softmax(x, dim=1), torch.full((3,), 1 / 3), torch.full((3,), 1 / 3))
    assert float(loss) == 0.0
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0
