"""Knowledge distillation (``train.distill``): the loss and its gradient by hand, the distilled rows' views and
targets, the config rules, and a round-0 train stage whose fingerprint ignores the distillation keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.errors import ConfigError
from engine.train.batch import Augmenters, distill_views
from engine.train.losses import distill_loss

REPO = Path(__file__).resolve().parents[2]


def test_distill_loss_by_hand_with_its_gradient() -> None:
    T = 2.0
    logits = torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])  # teacher probabilities already at T
    # student at T: softmax([1, 0, -1]) and the uniform distribution
    z = [math.exp(1), 1.0, math.exp(-1)]
    q0 = [v / sum(z) for v in z]
    kl0 = 0.5 * math.log(0.5 / q0[0]) + 0.5 * math.log(0.5 / q0[1])  # the 0 target term contributes nothing
    kl1 = sum(t * math.log(t / (1 / 3)) for t in (0.2, 0.3, 0.5))
    loss = distill_loss(logits, target, T)
    assert float(loss.detach()) == pytest.approx(T * T * (kl0 + kl1) / 2, rel=1e-6)
    loss.backward()
    # d/dz of T² · KL(t ‖ softmax(z / T)) / U is T · (q − t) / U
    q = np.array([q0, [1 / 3] * 3])
    np.testing.assert_allclose(logits.grad.numpy(), T * (q - target.numpy()) / 2, rtol=1e-5, atol=1e-7)
    # T = 1 with one-hot targets: the plain cross-entropy
    y = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits.detach(), y)
    assert float(distill_loss(logits.detach(), torch.nn.functional.one_hot(y, 3).float(), 1.0)) == pytest.approx(
        float(ce), rel=1e-6
    )


def test_distilled_rows_give_their_strong_view_and_the_teachers_probabilities() -> None:
    from engine.config import ModelConfig

    cfg = ModelConfig(name="tiny_cnn")
    from PIL import Image

    from engine.imaging import encode_image

    rng = np.random.default_rng(0)
    images = [encode_image(Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)), "PNG") for _ in range(3)]
    probs = np.array([[0.1] * 6 + [0.4], [1 / 7] * 7, [0.0] * 6 + [1.0]], dtype="<f4")
    batch = {"image": np.array(images, dtype=object), "target": np.array([p.tobytes() for p in probs], dtype=object)}
    torch.manual_seed(0)
    x, t = distill_views(batch, cfg, Augmenters.default(), 7)
    assert tuple(x.shape) == (3, cfg.in_chans, cfg.input_size, cfg.input_size) and x.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), probs)
    batch["target"] = np.array([probs[0, :3].tobytes()] * 3, dtype=object)
    with pytest.raises(ConfigError, match="hold 12 bytes, not 7 float32"):
        distill_views(batch, cfg, Augmenters.default(), 7)


def test_distill_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"train\.distill_temperature must be positive, got 0"):
        load_config([], ["train.distill_temperature=0"])
    with pytest.raises(ConfigError, match=r"train\.distill=true and train\.online_policy='dtm_r'"):
        load_config([], ["train.distill=true", "train.online_policy=dtm_r"])
    with pytest.raises(ConfigError, match=r"train\.distill_weight must be in"):
        load_config([], ["train.distill_weight=-1"])


def test_distillation_keys_enter_the_train_fingerprint_only_where_a_pool_was_scored(tmp_path) -> None:
    from engine.stages.base import StageContext, StageResult
    from engine.stages.train import TrainStage

    def stage(sets: list[str], *, scored: bool) -> TrainStage:
        cfg = load_config([REPO / "conf/demo.yaml"], [f"storage.root={tmp_path}", *sets])
        up = {"partition": StageResult("partition", "p" * 64)}
        if scored:
            up |= {"score": StageResult("score", "s" * 64), "select": StageResult("select", "c" * 64)}
        return TrainStage(StageContext(cfg, round=1 if scored else 0, upstream=up))

    plain = stage([], scored=False)
    assert stage(["train.distill=true"], scored=False).fingerprint() == plain.fingerprint()  # round 0: no pool
    assert "distill" not in plain.fingerprint_inputs()["train"]  # committed students keep their fingerprints
    one, two = stage([], scored=True), stage(["train.distill=true"], scored=True)
    assert one.fingerprint() != two.fingerprint() and two.distills and not one.distills
    assert two.fingerprint() != stage(["train.distill=true", "train.distill_temperature=4"], scored=True).fingerprint()
