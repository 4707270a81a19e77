"""Self-supervised pretraining pieces (engine.train.pretrain, the view augmentation, campaign.pretrain): no Ray."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.config import ModelConfig, PretrainConfig, load_config
from engine.data.transforms import build_view_augment
from engine.errors import ConfigError
from engine.labels import get_label_space
from engine.models.factory import create_model
from engine.train.pretrain import build_ssl_net, load_backbone, optimiser_config, ssl_loss, target_decay

SPACE = get_label_space("basic7")


def _faces(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 48, 48), dtype=np.uint8))


def test_views_are_seeded_per_draw_and_differ_between_faces_and_draws() -> None:
    view = build_view_augment(crop_min_scale=0.3, jitter=0.4)
    x = _faces()
    torch.manual_seed(3)
    a = view(x)
    torch.manual_seed(3)
    b = view(x)
    c = view(x)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)  # the same seed, the same views (a resumed epoch draws what the first run drew)
    assert not torch.equal(a, c)
    same = torch.stack([x[0]] * 4)
    torch.manual_seed(0)
    v = view(same)
    assert len({bytes(v[i].numpy()) for i in range(4)}) == 4  # each face draws its own crop, mirror, jitter


def test_a_flat_face_stays_flat_and_jitter_scales_its_brightness() -> None:
    flat = torch.full((8, 1, 48, 48), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    assert torch.equal(build_view_augment(crop_min_scale=0.3, jitter=0.0)(flat), flat)  # crops of a flat face
    torch.manual_seed(0)
    out = build_view_augment(crop_min_scale=0.3, jitter=0.5)(flat)
    per_face = out.view(8, -1)
    assert torch.equal(per_face.min(1).values, per_face.max(1).values)  # still flat: contrast has nothing to scale
    assert set(per_face[:, 0].tolist()) - {100}  # brightness moved some faces
    assert all(50 <= v <= 150 for v in per_face[:, 0].tolist())  # factors in [0.5, 1.5]


def test_a_crop_of_a_ramp_is_a_ramp_mirrored_about_half_the_time() -> None:
    ramp = torch.arange(48, dtype=torch.uint8).mul(5).view(1, 1, 1, 48).expand(64, 1, 48, 48).contiguous()
    torch.manual_seed(1)
    out = build_view_augment(crop_min_scale=1.0, jitter=0.0)(ramp)
    rows = out[:, 0, 24, :].to(torch.int64)
    increasing = (rows[:, 1:] >= rows[:, :-1]).all(1)
    decreasing = (rows[:, 1:] <= rows[:, :-1]).all(1)
    assert bool((increasing | decreasing).all())  # a crop of a ramp is a ramp, mirrored or not
    assert 0 < int(decreasing.sum()) < 64  # about half are mirrored


def test_the_loss_is_the_negative_cosine_to_the_other_views_fixed_target() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    t = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert float(ssl_loss(p, p, t, t).detach()) == pytest.approx(-1.0)
    assert float(ssl_loss(p, p, -t, -t).detach()) == pytest.approx(1.0)
    orth = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(ssl_loss(p, p, orth, orth).detach()) == pytest.approx(0.0)
    # by hand: -(cos(p1, t2) + cos(p2, t1)) / 2 over the batch
    p1, p2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    t1, t2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert float(ssl_loss(p1, p2, t1, t2)) == pytest.approx(-(2**-0.5 + 0.0) / 2)
    ssl_loss(p, p, t, t).backward()
    assert p.grad is not None and t.grad is None  # the stop-gradient: no gradient reaches the target


def test_the_byol_target_decay_rises_from_base_to_one() -> None:
    assert target_decay(0.99, 0, 100) == pytest.approx(0.99)
    assert target_decay(0.99, 50, 100) == pytest.approx(0.995)
    assert target_decay(0.99, 100, 100) == pytest.approx(1.0)
    assert target_decay(0.99, 500, 100) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig(name="tiny_cnn", in_chans=1, input_size=48),
        ModelConfig(name="vgg_fer", in_chans=1, input_size=48, drop_rate=0.3),
        ModelConfig(name="mini_xception", in_chans=1, input_size=48),
        ModelConfig(name="tiny_cnn", in_chans=1, input_size=48, head="esr", esr_branches=2),
        ModelConfig(name="resnet10t", in_chans=1, input_size=48),
    ],
    ids=["tiny_cnn", "vgg_fer", "mini_xception", "esr_head", "timm"],
)
def test_every_backbone_tensor_lands_in_the_round_0_net(model: ModelConfig) -> None:
    torch.manual_seed(0)
    net = build_ssl_net(model, PretrainConfig(method="simsiam", proj_dim=16, pred_dim=8))
    with torch.no_grad():
        for t in net.backbone.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t))  # unlike any fresh initialisation
    backbone = net.backbone.state_dict()
    classifier = create_model(model, len(SPACE), label_space=SPACE)
    fresh = load_backbone(classifier, backbone)
    state = classifier.state_dict()
    prefix = "backbone." if model.head != "linear" else ""
    for name, tensor in backbone.items():
        assert torch.equal(state[prefix + name], tensor), name
    assert fresh and set(fresh) == set(state) - {prefix + k for k in backbone}  # only the classifier is left
    x = torch.randn(2, 1, 48, 48)
    classifier.eval()
    assert classifier(x)["logits" if model.head != "linear" else slice(None)].shape == (2, len(SPACE))


def test_a_backbone_of_another_net_is_refused() -> None:
    net = build_ssl_net(ModelConfig(name="small_cnn", in_chans=1, input_size=48), PretrainConfig(method="simsiam"))
    with pytest.raises(ConfigError, match="does not fit this net"):
        load_backbone(create_model(ModelConfig(name="tiny_cnn", in_chans=1), 7), net.backbone.state_dict())


def test_the_config_section_and_its_rules() -> None:
    cfg = load_config(["conf/demo.yaml"], ["campaign.pretrain.method=byol", "campaign.pretrain.epochs=3"])
    assert cfg.campaign.pretrain.method == "byol" and cfg.campaign.pretrain.epochs == 3
    assert load_config(["conf/demo.yaml"]).campaign.pretrain.method is None  # off by default
    with pytest.raises(ConfigError, match="one of simsiam, byol"):
        load_config(["conf/demo.yaml"], ["campaign.pretrain.method=moco"])
    with pytest.raises(ConfigError, match=r"did you mean 'campaign\.pretrain\.epochs'"):
        load_config(["conf/demo.yaml"], ["campaign.pretrain.epoch=3"])
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(["conf/demo.yaml"], ["campaign.pretrain.method=simsiam", "campaign.teacher_checkpoint=x.pt"])
    with pytest.raises(ConfigError, match="num_workers=1"):
        PretrainConfig(method="simsiam", in_process=True, num_workers=2)
    o = optimiser_config(PretrainConfig(method="simsiam", epochs=7, lr=0.1, warmup_epochs=2, seed=4))
    assert (o.epochs, o.lr, o.schedule, o.warmup_epochs, o.optimizer, o.seed) == (7, 0.1, "warmup_cosine", 2, "sgd", 4)
    assert dataclasses.asdict(o)["in_process"] is False
