"""The ``student`` section: model / train keys for the students of rounds >= 1 (Noisy Student), checked at load,
and warm start only from a teacher of the same architecture."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import load_config, same_architecture
from engine.errors import ConfigError
from engine.stages.base import StageContext, StageResult, TeacherRef
from engine.stages.train import TrainStage

BASE = ["sources.fer2013.format=fer2013", "sources.fer2013.path=.", "campaign.labelled=[fer2013]"]


def test_student_keys_apply_from_round_one_only() -> None:
    cfg = load_config(
        [],
        [*BASE, "model.width=16", "train.epochs=5", "student.model.width=24", "student.model.drop_rate=0.5",
         "student.train.epochs=3"],
    )  # fmt: skip
    assert cfg.for_round(0) is cfg
    for r in (1, 2):
        s = cfg.for_round(r)
        assert (s.model.width, s.model.drop_rate, s.train.epochs) == (24, 0.5, 3)
        assert (s.model.name, s.train.lr, s.threshold) == (cfg.model.name, cfg.train.lr, cfg.threshold)
    plain = load_config([], BASE)
    assert plain.for_round(3) is plain


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.model.widht=24", "unknown key 'student.model.widht' in the student section; did you mean "
         "'student.model.width'?"),
        ("student.train.epochs=0", "student (rounds >= 1): train.epochs must be positive, got 0"),
        ("student.train.lr=fast", "student (rounds >= 1): student.train.lr in the student section must be float"),
        ("student.optimizer=sgd", "unknown key 'student.optimizer'"),
    ],
)  # fmt: skip
def test_bad_student_keys_fail_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([], [*BASE, override])
    assert str(err.value).startswith(message)


def test_same_architecture_ignores_only_initialisation_and_dropout() -> None:
    m = load_config([], BASE).model

    assert same_architecture(m, dataclasses.replace(m, drop_rate=0.5, pretrained=True, weights="w.pth"))
    assert not same_architecture(m, dataclasses.replace(m, width=m.width + 8))
    assert not same_architecture(m, dataclasses.replace(m, name="vgg_fer"))


@pytest.mark.parametrize(
    ("student", "round_", "teacher_round", "warm"),
    [
        ([], 1, 0, True),  # same net: warm start as configured
        (["student.model.drop_rate=0.5"], 1, 0, True),  # only noisier: still the teacher's weights
        (["student.model.width=24"], 1, 0, False),  # larger than round 0's teacher: from scratch
        (["student.model.width=24"], 2, 1, True),  # round 2's teacher is round 1's (larger) student
        (["student.model.width=24"], 2, 0, False),  # round 1 not promoted: the teacher is still round 0's
        (["student.model.width=24"], 1, -1, True),  # an outside checkpoint: checked when its weights load
        (["student.model.width=24", "train.warm_start=false"], 2, 1, False),
    ],
)
def test_warm_start_only_from_a_teacher_of_the_same_architecture(student, round_, teacher_round, warm, tmp_path):
    cfg = load_config([], [*BASE, f"storage.root={tmp_path}", "train.warm_start=true", *student])
    teacher = TeacherRef(("teacher.pt",), "f" * 64, teacher_round)
    partition = {"partition": StageResult("partition", "p" * 64)}  # what a committed partition hands on
    stage = TrainStage(StageContext(cfg, round=round_, upstream=partition, teacher=teacher))
    assert stage.init_checkpoint == ("teacher.pt" if warm else None)
    assert stage.model_cfg == cfg.for_round(round_).model
    assert stage.fingerprint_inputs()["upstream"]["teacher"] == ("f" * 64 if warm else "")


def test_a_student_weight_file_is_made_absolute_at_load(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config([], [*BASE, "student.model.name=resnet18", "student.model.weights=w.safetensors"])
    monkeypatch.chdir("/")  # later calls (Ray workers) run elsewhere
    assert cfg.for_round(1).model.weights == str(tmp_path / "w.safetensors")


def test_an_outside_teacher_that_does_not_fit_is_a_one_line_config_error(tmp_path) -> None:
    """Warm start from an outside checkpoint compares the state dicts' names and shapes, not only the model's name:
    a vgg_fer of width 8 does not fit a width-16 student, and the error names the first tensor that differs."""
    from engine.config import ModelConfig, TrainConfig
    from engine.labels import get_label_space
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model
    from engine.train.loop import LoopSpec, state_dict_mismatch, warm_start

    space = get_label_space("basic7")
    small, large = ModelConfig(name="vgg_fer", width=8), ModelConfig(name="vgg_fer", width=16)
    teacher, student = create_model(small, len(space)), create_model(large, len(space))
    assert state_dict_mismatch(teacher.state_dict(), teacher.state_dict()) == ""
    first = next(iter(student.state_dict()))
    why = state_dict_mismatch(teacher.state_dict(), student.state_dict())
    assert why == f"{first} is (8, 1, 3, 3) in the checkpoint, (16, 1, 3, 3) in the student"
    path = str(tmp_path / "teacher.pt")
    save_checkpoint(path, teacher, model_cfg=small, label_space=space)
    spec = LoopSpec(TrainConfig(), large, space, steps_per_epoch=1, call_id="t", init_checkpoint=path)
    with pytest.raises(ConfigError, match=f"do not fit the student vgg_fer .*{first} is .*train.warm_start=false"):
        warm_start(student, spec)
    same = create_model(small, len(space))
    warm_start(same, LoopSpec(TrainConfig(), small, space, steps_per_epoch=1, call_id="t", init_checkpoint=path))
    assert all((a == b).all() for a, b in zip(same.state_dict().values(), teacher.state_dict().values(), strict=True))
