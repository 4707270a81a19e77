"""Student training on Ray Train with real FER2013 faces: crash + resume, finished-run re-call, online DTM-R branch."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config import ModelConfig, TrainConfig
from engine.errors import ConfigError, EngineError
from engine.labels import get_label_space
from engine.train.batch import cycle_batches, images_to_uint8
from engine.train.data import balanced_repeat_factors, draw_repeats, steps_per_epoch
from engine.train.optim import cosine_factor
from engine.train.state import POLICY_FILE, STATE_FILE
from tests.fixtures import fer_images

pytestmark = pytest.mark.integration

FER_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""``fer2013_label`` 0..6 in FER2013's own order (mapped to basic7 by name)."""
BASIC7 = get_label_space("basic7")
N_LABELLED, N_PSEUDO, N_UNLABELLED = 120, 40, 40


@pytest.fixture(scope="module")
def ray_session(fer2013_dir: Path, ray_local) -> None:
    """The session's local Ray (tests/integration/conftest.py, which also sets Ray Train's fast health-check
    interval), once the data is known to exist."""


@pytest.fixture(scope="module")
def faces() -> list[tuple[bytes, int]]:
    """200 real FER2013Train PNGs with basic7 labels (rows with fer2013_label -1 skipped)."""
    rows = [(im.png, BASIC7.index(FER_NAMES[im.label])) for im in fer_images(220) if im.label >= 0]
    assert len(rows) >= N_LABELLED + N_PSEUDO + N_UNLABELLED
    return rows[: N_LABELLED + N_PSEUDO + N_UNLABELLED]


@pytest.fixture(scope="module")
def datasets(ray_session: None, faces: list[tuple[bytes, int]]) -> dict[str, Any]:
    import ray

    lab = faces[:N_LABELLED]
    pse = faces[N_LABELLED : N_LABELLED + N_PSEUDO]
    unl = faces[N_LABELLED + N_PSEUDO :]
    return {
        "labelled": ray.data.from_items([{"image": b, "label": y} for b, y in lab], override_num_blocks=2),
        "pseudo": ray.data.from_items(
            [{"image": b, "label": y, "weight": np.float32(0.5)} for b, y in pse], override_num_blocks=1
        ),
        "unlabelled": ray.data.from_items(
            [{"image": b, "idx": i} for i, (b, _) in enumerate(unl)], override_num_blocks=1
        ),
    }


def _train(tmp: Path, run_name: str, train_cfg: TrainConfig, ds: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from engine.train.trainer import train_student

    return train_student(
        train_cfg=train_cfg,
        model_cfg=ModelConfig(name="tiny_cnn"),
        label_space=BASIC7,
        labelled=ds["labelled"],
        pseudo=kw.pop("pseudo", ds["pseudo"]),
        unlabelled=kw.pop("unlabelled", None),
        storage_path=str(tmp / "ray"),
        run_name=run_name,
        init_checkpoint=None,
        out_checkpoint=str(tmp / f"{run_name}.pt"),
        **kw,
    )


# ---------------------------------------------------------------- pure helpers (no Ray)


def test_balanced_repeat_factors_equalise_classes() -> None:
    # N = 60 rows over K = 3 present classes: each class should bring N/K = 20 rows per epoch.
    assert balanced_repeat_factors([10, 0, 30, 20]) == [2.0, 0.0, 20 / 30, 1.0]
    labels = np.array([0, 0, 2, 2, 2], dtype=np.int64)
    k = draw_repeats(labels, [3.0, 0.0, 1.0], np.random.default_rng(0))
    assert k.tolist() == [3, 3, 1, 1, 1]
    half = draw_repeats(np.zeros(20_000, dtype=np.int64), [1.5], np.random.default_rng(1))
    assert set(half.tolist()) == {1, 2}
    assert abs(half.mean() - 1.5) < 0.02


def test_cycle_batches_fixed_size_across_passes() -> None:
    passes: list[int] = []

    def stream(k: int) -> Iterator[dict[str, np.ndarray]]:
        passes.append(k)
        yield {"idx": np.array([0, 1, 2])}
        yield {"idx": np.array([3])}

    it = cycle_batches(stream, 3)
    got = [next(it)["idx"].tolist() for _ in range(4)]
    assert got == [[0, 1, 2], [3, 0, 1], [2, 3, 0], [1, 2, 3]]
    assert passes == [0, 1, 2]
    with pytest.raises(EngineError, match="empty"):
        next(cycle_batches(lambda k: iter([]), 2))


def test_schedule_and_steps() -> None:
    assert cosine_factor(0, total_steps=10) == 1.0
    assert cosine_factor(10, total_steps=10) == pytest.approx(math.cos(7 * math.pi / 16))
    assert cosine_factor(25, total_steps=10) == cosine_factor(10, total_steps=10)
    assert steps_per_epoch(160, batch_size=32, num_workers=1) == 5
    assert steps_per_epoch(161, batch_size=32, num_workers=2) == 3


def test_optimizer_decays_only_weight_tensors() -> None:
    from engine.models.factory import create_model
    from engine.train.optim import build_optimizer

    model = create_model(ModelConfig(name="tiny_cnn"), len(BASIC7))
    opt = build_optimizer(model, TrainConfig(lr=0.05, weight_decay=1e-3))
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-3, 0.0)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert (decay["nesterov"], decay["momentum"], decay["lr"]) == (True, 0.9, 0.05)
    with pytest.raises(ConfigError, match=r"train\.optimizer must be one of sgd, adamw; got 'adam'"):
        TrainConfig(optimizer="adam")  # refused with the config, before any optimiser is built


def test_images_to_uint8_resizes_and_converts(faces: list[tuple[bytes, int]]) -> None:
    import io

    from PIL import Image

    grey = faces[0][0]
    buf = io.BytesIO()
    Image.open(io.BytesIO(grey)).convert("RGB").resize((96, 96)).save(buf, format="PNG")
    x = images_to_uint8([grey, buf.getvalue()], size=48, in_chans=1)
    assert x.shape == (2, 1, 48, 48) and str(x.dtype) == "torch.uint8"
    assert np.array_equal(x[0, 0].numpy(), np.asarray(Image.open(io.BytesIO(grey))))
    assert images_to_uint8([grey], size=32, in_chans=3).shape == (1, 3, 32, 32)


def test_warm_start_loads_teacher_weights_and_rejects_other_nets(tmp_path: Path) -> None:
    import torch

    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model
    from engine.train.loop import LoopSpec, warm_start

    teacher = create_model(ModelConfig(name="tiny_cnn"), len(BASIC7))
    path = str(tmp_path / "teacher.pt")
    save_checkpoint(path, teacher, model_cfg=ModelConfig(name="tiny_cnn"), label_space=BASIC7)
    spec = LoopSpec(
        train=TrainConfig(),
        model=ModelConfig(name="tiny_cnn"),
        label_space=BASIC7,
        steps_per_epoch=1,
        call_id="x",
        init_checkpoint=path,
    )
    torch.manual_seed(123)
    student = create_model(spec.model, len(BASIC7))
    warm_start(student, spec)
    for key, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[key], value)
    other = dataclasses.replace(spec, model=ModelConfig(name="mini_xception"))
    with pytest.raises(ConfigError, match=r"holds tiny_cnn .* do not fit the student mini_xception"):
        warm_start(create_model(other.model, len(BASIC7)), other)


# ---------------------------------------------------------------- Ray Train


def test_invalid_inputs_fail_before_training(tmp_path: Path, datasets: dict[str, Any]) -> None:
    import ray

    online = TrainConfig(epochs=1, online_policy="dtm_r")
    with pytest.raises(ConfigError, match="needs the unlabelled dataset and num_unlabelled"):
        _train(tmp_path, "bad-online", online, datasets)
    with pytest.raises(ConfigError, match="no online form"):
        _train(
            tmp_path,
            "bad-policy",
            TrainConfig(epochs=1, online_policy="quantile"),
            datasets,
            unlabelled=datasets["unlabelled"],
            num_unlabelled=N_UNLABELLED,
        )
    bad = {**datasets, "labelled": ray.data.from_items([{"image": b"x", "label": 7}, {"image": b"y", "label": 0}])}
    with pytest.raises(ConfigError, match="holds label 7, outside"):
        _train(tmp_path, "bad-label", TrainConfig(epochs=1, balanced_sampling=True), bad)
    assert not (tmp_path / "ray").exists()


def test_supervised_stream_weights_flags_and_repeats(datasets: dict[str, Any], faces: list[tuple[bytes, int]]) -> None:
    from engine.schemas import SUPERVISED_SCHEMA
    from engine.train.data import build_supervised_dataset

    # Integer repeat factors make the class-balanced resampling exact: class 0 twice, class 1 never, others once.
    factors = [2.0, 0.0] + [1.0] * (len(BASIC7) - 2)
    ds = build_supervised_dataset(
        datasets["labelled"], datasets["pseudo"], lambda_u=0.8, repeat_factors=factors, seed=0
    )
    assert ds.schema().names == SUPERVISED_SCHEMA.names
    rows = ds.take_all()
    lab = np.bincount([y for _, y in faces[:N_LABELLED]], minlength=len(BASIC7))
    got = np.bincount([r["label"] for r in rows if not r["strong"]], minlength=len(BASIC7))
    assert got.tolist() == [2 * lab[0], 0, *lab[2:].tolist()]
    assert {r["weight"] for r in rows if not r["strong"]} == {1.0}
    pseudo = [r for r in rows if r["strong"]]
    assert len(pseudo) == N_PSEUDO and {r["weight"] for r in pseudo} == {np.float32(0.8) * np.float32(0.5)}
    assert sorted(r["image"] for r in pseudo) == sorted(b for b, _ in faces[N_LABELLED : N_LABELLED + N_PSEUDO])


def test_online_crash_resume_then_finished_run_is_not_retrained(tmp_path: Path, datasets: dict[str, Any]) -> None:
    """Online DTM-R + offline pseudo rows: a crash after epoch 0, a resumed call, then a call that trains nothing."""
    import torch
    from mlflow.tracking import MlflowClient

    from engine.models.checkpoint import load_checkpoint
    from engine.thresholds import get_policy, learning_effect, thresholds_to_json

    # warmup=False: as soon as one prediction reaches tau, the most cached class gets beta = 1, threshold tau.
    params = {"tau": 0.25, "tau_min": 0.1, "mapping": "convex", "warmup": False, "never_label": ["Disgust"]}
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.03, online_policy="dtm_r", mu=1, max_failures=0, seed=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("t", artifact_location=str(tmp_path / "art"))).info.run_id
    kw = {
        "unlabelled": datasets["unlabelled"],
        "num_unlabelled": N_UNLABELLED,
        "policy_params": params,
        "mlflow": {"tracking_uri": uri, "run_id": run_id},
    }
    out = tmp_path / "student.pt"
    with pytest.raises(EngineError, match=f"(?s){re.escape(str(tmp_path / 'ray' / 'student'))}.*run_name='student'"):
        _train(tmp_path, "student", cfg, datasets, fault_after_epoch=0, **kw)
    assert not out.exists()

    res = _train(tmp_path, "student", cfg, datasets, **kw)
    hist = res["history"]
    assert (res["epochs"], res["epochs_run"], res["resumed_from_epoch"]) == (2, 1, 1)
    assert [r["epoch"] for r in hist] == [0, 1]
    assert len({r["call_id"] for r in hist}) == 2  # epoch 0 by the crashed call, epoch 1 by this one
    for rec in hist:
        assert (rec["images"], rec["steps"], rec["unlabelled_images"]) == (N_LABELLED + N_PSEUDO, 5, 5 * 32)
        # DTM-R's hard mask: the rate is a count of accepted unlabelled rows over the 160 drawn, and the
        # unlabelled loss is zero exactly when none was accepted.
        accepted = rec["mask_rate"] * rec["unlabelled_images"]
        assert accepted == pytest.approx(round(accepted), abs=1e-6) and 0 <= round(accepted) <= 160
        assert (rec["loss_u"] == 0.0) == (round(accepted) == 0)
    assert math.isfinite(res["train_loss"]) and res["train_loss"] > 0
    assert 0.0 <= res["mask_rate"] <= 1.0 and res["mask_rate"] == hist[1]["mask_rate"]
    assert hist[0]["lr"] == pytest.approx(0.03)
    assert hist[1]["lr"] == pytest.approx(0.03 * cosine_factor(5, total_steps=10))  # scheduler restored

    # The policy state was restored on resume: epoch 1 starts from epoch 0's final thresholds, not fresh ones.
    disgust = BASIC7.index("Disgust")
    fresh = [None if c == disgust else 0.1 for c in range(len(BASIC7))]
    assert hist[0]["thresholds_start"] == fresh
    assert max(t for t in hist[0]["thresholds"] if t is not None) == 0.25
    assert hist[1]["thresholds_start"] == hist[0]["thresholds"]

    # The saved policy state reproduces the reported thresholds, through the policy and from the formula.
    state = json.loads((Path(res["ray_checkpoint"]) / POLICY_FILE).read_text())
    assert state["policy"] == "dtm_r" and state["params"]["never_label"] == [disgust]
    cache = np.array(state["state"]["cache"])
    assert cache.shape == (N_UNLABELLED,) and cache.min() >= -1 and cache.max() < len(BASIC7)
    policy = get_policy("dtm_r", state["params"], num_classes=len(BASIC7))
    policy.load_state_dict(state)
    assert thresholds_to_json(policy.thresholds()) == res["thresholds"] == hist[1]["thresholds"]
    counts = np.bincount(cache + 1, minlength=len(BASIC7) + 1)
    beta = learning_effect(counts[1:], int(counts[0]), warmup=False)
    expected = np.maximum(0.1, 0.25 * beta / (2 - beta))
    expected[disgust] = np.inf
    assert thresholds_to_json(expected) == res["thresholds"]
    assert (Path(res["ray_checkpoint"]) / STATE_FILE).is_file()

    loaded = load_checkpoint(str(out), expect_label_space=BASIC7, expect_input_size=48)
    assert loaded.fingerprint == res["fingerprint"]
    assert loaded.extra["train"]["epochs"] == 2 and loaded.extra["train"]["online_policy"] == "dtm_r"
    with torch.no_grad():
        assert loaded.model(torch.zeros(3, 1, 48, 48)).shape == (3, len(BASIC7))

    # Rank 0 logged each epoch once to MLflow, across the crash.
    assert [m.step for m in client.get_metric_history(run_id, "train/train_loss")] == [0, 1]
    logged = client.get_run(run_id).data.metrics
    assert logged["train/train_loss"] == pytest.approx(res["train_loss"])
    assert logged["train/mask_rate"] == pytest.approx(res["mask_rate"])
    assert logged["train/tau/Neutral"] == pytest.approx(res["thresholds"][0])
    assert "train/tau/Disgust" not in logged  # never-label class: infinite threshold, not logged

    again = _train(tmp_path, "student", cfg, datasets, **kw)
    assert (again["epochs"], again["epochs_run"], again["resumed_from_epoch"]) == (2, 0, 2)
    assert again["fingerprint"] == res["fingerprint"] and again["history"] == hist
    assert [m.step for m in client.get_metric_history(run_id, "train/train_loss")] == [0, 1]


def test_best_val_epoch_with_ema_is_kept_across_a_resume(
    tmp_path: Path, datasets: dict[str, Any], faces: list[tuple[bytes, int]]
) -> None:
    """select_best + EMA, in memory: every epoch validated, a crash after epoch 1, the resumed run keeps the best
    epoch's EMA weights; the exported student scores exactly the recorded val macro-F1; the worker's torch threads
    are the machine's cores."""
    import os

    import ray
    import torch

    from engine.metrics import classification_metrics
    from engine.models.checkpoint import load_checkpoint
    from engine.models.teacher import CheckpointTeacher
    from engine.train.batch import images_to_uint8
    from engine.train.memory import to_images
    from engine.train.state import read_train_state

    val_rows = faces[N_LABELLED + N_PSEUDO :]
    val = ray.data.from_items([{"image": b, "label": y} for b, y in val_rows], override_num_blocks=1)
    cfg = TrainConfig(
        epochs=4, batch_size=32, lr=0.05, schedule="onecycle", ema_decay=0.6, label_smoothing=0.1,
        select_best=True, val_from=0.0, max_failures=0, seed=1,
    )  # fmt: skip
    with pytest.raises(EngineError, match="injected test fault"):
        _train(tmp_path, "best", cfg, datasets, val=val, fault_after_epoch=1)
    res = _train(tmp_path, "best", cfg, datasets, val=val)
    hist = res["history"]
    assert (res["epochs"], res["epochs_run"], res["resumed_from_epoch"]) == (4, 2, 2)
    assert {r["threads"] for r in hist} == {len(os.sched_getaffinity(0))} and all(r["in_memory"] for r in hist)
    scores = [r["val_macro_f1"] for r in hist]
    best = int(np.argmax(scores))  # the first of equal maxima, as the worker keeps only strict improvements
    assert res["best_epoch"] == best and res["best_val_macro_f1"] == scores[best]
    state = read_train_state(res["ray_checkpoint"])
    assert state.best is not None and state.best["epoch"] == best and state.ema is not None
    assert state.ema["updates"] == sum(r["steps"] for r in hist)  # the EMA state survived the crash

    loaded = load_checkpoint(str(tmp_path / "best.pt"), expect_label_space=BASIC7, expect_input_size=48)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state.best["model"][key])
    assert loaded.extra["train"]["best_epoch"] == best
    px = images_to_uint8([b for b, _ in val_rows], size=48, in_chans=1).numpy()
    probs = CheckpointTeacher.from_model(loaded.model.eval(), loaded.model_cfg, BASIC7).predict(to_images(px)).probs
    m = classification_metrics(np.array([y for _, y in val_rows]), probs.argmax(1), list(BASIC7.classes))
    assert float(m["macro_f1"]) == scores[best]


def test_streaming_path_when_the_cache_is_off(tmp_path: Path, datasets: dict[str, Any]) -> None:
    """cache_mb=0: batches stream from Ray Data (decoded per batch); one thread when asked for one."""
    res = _train(tmp_path, "stream", TrainConfig(epochs=1, batch_size=32, cache_mb=0, torch_threads=1), datasets)
    rec = res["history"][0]
    assert (rec["in_memory"], rec["threads"], rec["images"], rec["steps"]) == (False, 1, N_LABELLED + N_PSEUDO, 5)


def test_the_in_memory_set_keeps_the_dataset_order_whatever_the_reads_finish_in(
    datasets: dict[str, Any], faces: list[tuple[bytes, int]]
) -> None:
    """Blocks that finish out of order (random delays) still decode into rows in the dataset's order, so the seeded
    epoch permutations draw the same batches on every run."""
    import random
    import time

    import ray

    from engine.train.trainer import put_decoded

    def late(batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(random.random() * 0.2)
        return batch

    rows = [{"image": b, "label": y, "idx": i} for i, (b, y) in enumerate(faces)]
    ds = ray.data.from_items(rows, override_num_blocks=20).map_batches(late, batch_size=None)
    columns = ray.get(put_decoded(ds, ModelConfig(name="tiny_cnn"), "test"))
    assert columns["idx"].tolist() == list(range(len(faces)))
    assert columns["label"].tolist() == [y for _, y in faces]


def test_in_process_training_equals_ray_train_and_resumes_from_its_own_checkpoint(
    tmp_path: Path, datasets: dict[str, Any]
) -> None:
    """train.in_process (Ray Train's local mode): the same student as the Ray Train workers, bit for bit, also when
    the run crashed after epoch 1 and resumed from the engine's local checkpoint; MLflow gets each epoch once."""
    import os

    import torch
    from mlflow.tracking import MlflowClient

    from engine.models.checkpoint import load_checkpoint

    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, ema_decay=0.6, max_failures=0, seed=5)
    workers = _train(tmp_path, "workers", cfg, datasets)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("t", artifact_location=str(tmp_path / "art"))).info.run_id
    local_cfg = dataclasses.replace(cfg, in_process=True)
    kw = {"mlflow": {"tracking_uri": uri, "run_id": run_id}}
    with pytest.raises(EngineError, match=r"RuntimeError: injected test fault after epoch 1.*run_name='local'"):
        _train(tmp_path, "local", local_cfg, datasets, fault_after_epoch=1, **kw)
    local_dir = tmp_path / "ray" / "local" / "local"
    assert sorted(os.listdir(local_dir)) == ["epoch_000001"]  # the committed epoch; older ones removed
    assert [m.step for m in client.get_metric_history(run_id, "train/train_loss")] == [0, 1]

    local = _train(tmp_path, "local", local_cfg, datasets, **kw)
    assert (local["epochs"], local["epochs_run"], local["resumed_from_epoch"]) == (3, 1, 2)
    assert sorted(os.listdir(local_dir)) == ["epoch_000002"]
    assert [r["train_loss"] for r in local["history"]] == [r["train_loss"] for r in workers["history"]]
    assert [m.step for m in client.get_metric_history(run_id, "train/train_loss")] == [0, 1, 2]
    a = load_checkpoint(str(tmp_path / "workers.pt")).model.state_dict()
    b = load_checkpoint(str(tmp_path / "local.pt")).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
