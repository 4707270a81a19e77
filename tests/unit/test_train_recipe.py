"""The training recipe: weight EMA, LR schedules, label smoothing, in-memory epochs, flip TTA, the vgg_fer net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig, TrainConfig, load_config
from engine.errors import ConfigError
from engine.labels import get_label_space
from engine.models.factory import count_params, create_model
from engine.models.teacher import CheckpointTeacher
from engine.train.ema import WeightEMA, ema_decay_at
from engine.train.loop import first_val_epoch
from engine.train.losses import LossWeights, SupervisedLoss, weighted_ce
from engine.train.memory import MemorySet, epoch_order, memory_batches, to_images
from engine.train.optim import build_optimizer, build_scheduler, warmup_cosine_factor
from engine.train.state import TrainState
from engine.train.trainer import fits_in_memory, kept_weights


class _Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.register_buffer("stat", torch.tensor([0.0]))


def test_ema_matches_a_hand_computation() -> None:
    model = _Affine()
    ema = WeightEMA(model, decay=0.9)
    # step 0: d = min(0.9, 1/10) = 0.1; step 1: d = min(0.9, 2/11); step 2 ... step 30: d = 0.9
    assert ema_decay_at(0.9, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.9, 80) == 0.9
    expected = np.array([1.0, 2.0])
    for k, new in enumerate(([3.0, 0.0], [5.0, 4.0], [-1.0, 1.0])):
        with torch.no_grad():
            model.w.copy_(torch.tensor(new))
            model.stat.fill_(float(k + 7))
        ema.update(model)
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * np.array(new)
        np.testing.assert_allclose(ema.module.w.detach().numpy(), expected, rtol=1e-6)
        assert float(ema.module.stat) == k + 7  # buffers are copied, not averaged
    # by hand: e1 = 0.1*[1,2] + 0.9*[3,0] = [2.8, 0.2]; e2 = (2/11)*e1 + (9/11)*[5,4]; e3 = (3/12)*e2 + (9/12)*[-1,1]
    e1 = np.array([2.8, 0.2])
    e2 = 2 / 11 * e1 + 9 / 11 * np.array([5.0, 4.0])
    e3 = 0.25 * e2 + 0.75 * np.array([-1.0, 1.0])
    np.testing.assert_allclose(ema.module.w.detach().numpy(), e3, rtol=1e-6)
    assert ema.updates == 3 and not ema.module.w.requires_grad


def test_ema_state_round_trip() -> None:
    model = _Affine()
    ema = WeightEMA(model, decay=0.99)
    ema.update(model)
    other = WeightEMA(_Affine(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    assert torch.equal(other.module.w, ema.module.w)


def test_kept_weights_prefer_best_then_ema_then_last() -> None:
    last = {"w": torch.tensor([1.0])}
    ema = {"module": {"w": torch.tensor([2.0])}, "updates": 5}
    best = {"epoch": 3, "val_macro_f1": 0.5, "model": {"w": torch.tensor([3.0])}}
    state = TrainState(model=last, optimizer={}, scheduler={}, epoch=4, global_step=10)
    assert float(kept_weights(state)["w"]) == 1.0
    state.ema = ema
    assert float(kept_weights(state)["w"]) == 2.0
    state.best = best
    assert float(kept_weights(state)["w"]) == 3.0


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_onecycle_is_torchs_onecycle() -> None:
    cfg = TrainConfig(epochs=4, lr=0.05, schedule="onecycle")
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=4 * 10)
    expected = []
    for _ in range(40):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(cfg, 10) == pytest.approx(expected)
    assert max(expected) == pytest.approx(0.05) and expected[0] == pytest.approx(0.05 / 25)


def test_warmup_cosine_by_hand() -> None:
    assert warmup_cosine_factor(0, total_steps=10, warmup_steps=2) == pytest.approx(0.5)
    assert warmup_cosine_factor(1, total_steps=10, warmup_steps=2) == pytest.approx(1.0)
    assert warmup_cosine_factor(2, total_steps=10, warmup_steps=2) == pytest.approx(1.0)
    assert warmup_cosine_factor(6, total_steps=10, warmup_steps=2) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, total_steps=10, warmup_steps=2) == pytest.approx(0.0)
    lrs = _lrs(TrainConfig(epochs=2, lr=0.1, schedule="warmup_cosine", warmup_epochs=0.5), 4)
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 6))])  # W=2, K=8


def test_label_smoothing_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    w = torch.tensor([1.0, 0.5])
    eps = 0.1
    logp = F.log_softmax(logits, dim=1)
    target = torch.full((2, 3), eps / 3)
    target[0, 0] += 1 - eps
    target[1, 2] += 1 - eps
    per_row = -(target * logp).sum(1)
    expected = (w * per_row).mean()
    assert float(weighted_ce(logits, y, w, eps)) == pytest.approx(float(expected), rel=1e-6)
    loss, _ = SupervisedLoss(ModelConfig(), get_label_space("basic7"), LossWeights(smoothing=eps))(
        {"logits": torch.cat([logits, torch.zeros(2, 4)], 1)}, y, w
    )
    wide = torch.cat([logits, torch.zeros(2, 4)], 1)
    target7 = torch.full((2, 7), eps / 7)
    target7[0, 0] += 1 - eps
    target7[1, 2] += 1 - eps
    assert float(loss) == pytest.approx(float((w * -(target7 * F.log_softmax(wide, 1)).sum(1)).mean()), rel=1e-6)


def _mem(labels: list[int], strong: list[bool]) -> MemorySet:
    n = len(labels)
    return MemorySet(
        {
            "pixels": np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, 2).repeat(2, 3),
            "label": np.array(labels, np.int64),
            "weight": np.ones(n, np.float32),
            "strong": np.array(strong),
        }
    )


def test_epoch_order_is_a_seeded_permutation_and_balances_labelled_rows() -> None:
    mem = _mem([0, 0, 0, 1, 1, 2], [False, False, False, False, True, False])
    a = epoch_order(mem, np.random.default_rng(5), None)
    assert sorted(a.tolist()) == list(range(6))
    assert a.tolist() == epoch_order(mem, np.random.default_rng(5), None).tolist()
    # factors 0 for class 0, 2 for class 1, 1.5 for class 2: labelled class-0 rows vanish, the labelled class-1 row
    # appears twice, the class-2 row once or twice, the pseudo (strong) class-1 row exactly once
    counts = np.zeros(6, int)
    for seed in range(200):
        order = epoch_order(mem, np.random.default_rng(seed), [0.0, 2.0, 1.5])
        c = np.bincount(order, minlength=6)
        assert c[:3].tolist() == [0, 0, 0] and c[3] == 2 and c[4] == 1 and c[5] in (1, 2)
        counts += c
    assert 0.4 < (counts[5] - 200) / 200 < 0.6  # Bernoulli(0.5) extra copies
    batches = list(memory_batches(mem, np.array([5, 0, 3, 1, 4]), 2))
    assert [b["label"].tolist() for b in batches] == [[2, 0], [1, 0], [1]]
    assert batches[0]["pixels"][:, 0, 0, 0].tolist() == [5, 0]


def test_flip_tta_is_the_mean_of_the_two_views() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny_cnn")
    space = get_label_space("basic7")
    model = create_model(cfg, 7).eval()
    px = np.random.default_rng(0).integers(0, 256, (5, 1, 48, 48), dtype=np.uint8)
    plain = CheckpointTeacher.from_model(model, cfg, space).predict(to_images(px)).probs
    mirrored = CheckpointTeacher.from_model(model, cfg, space).predict(to_images(px[..., ::-1].copy())).probs
    tta = CheckpointTeacher.from_model(model, cfg, space, tta_flip=True).predict(to_images(px)).probs
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the two views differ, so the mean is not either one


def test_vgg_fer_is_the_reference_net() -> None:
    assert count_params(create_model(ModelConfig(name="vgg_fer"), 7)) == 294_615
    wide = create_model(ModelConfig(name="vgg_fer", width=24), 7)
    assert wide(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    assert count_params(wide) > 2 * 294_615


def test_in_memory_decision_and_val_epochs() -> None:
    m = ModelConfig()
    assert fits_in_memory(TrainConfig(cache_mb=1), m, 455)  # 455 * 48 * 48 = 1,048,320 bytes <= 1 MiB
    assert not fits_in_memory(TrainConfig(cache_mb=1), m, 456)
    assert fits_in_memory(TrainConfig(cache_mb=1, num_workers=2), m, 910)
    assert not fits_in_memory(TrainConfig(cache_mb=0), m, 1)
    assert first_val_epoch(TrainConfig(epochs=40, val_from=0.5)) == 20
    assert first_val_epoch(TrainConfig(epochs=3, val_from=1.0)) == 2
    assert first_val_epoch(TrainConfig(epochs=10, val_from=0.0)) == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schedule", "linear", "train.schedule must be one of cosine, onecycle, warmup_cosine"),
        ("label_smoothing", 1.0, "train.label_smoothing must be in [0.0, 1.0)"),
        ("ema_decay", -0.1, "train.ema_decay must be in [0.0, 1.0)"),
        ("val_from", 1.5, "train.val_from must be in [0.0, 1.0]"),
        ("torch_threads", -1, "train.torch_threads must be in [0, 4096]"),
        ("warmup_epochs", 11.0, "train.warmup_epochs must be in [0.0, 10.0]"),
    ],
)
def test_recipe_keys_are_validated(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config((), overrides=[f"train.{key}={value}", "train.epochs=10"])
