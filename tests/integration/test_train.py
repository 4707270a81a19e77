"""Student training on Ray Train with real FER2013 faces: crash + resume, finished-run re-call, online DTM-R branch."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config import ModelConfig, TrainConfig
from engine.errors import EngineError
from engine.labels import get_label_space
from engine.train.batch import cycle_batches, images_to_uint8
from engine.train.data import balanced_repeat_factors, draw_repeats, steps_per_epoch
from engine.train.loop import cosine_factor
from engine.train.state import POLICY_FILE, STATE_FILE
from tests.fixtures import fer_images

pytestmark = pytest.mark.integration

FER_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""``fer2013_label`` 0..6 in FER2013's own order (mapped to basic7 by name)."""
BASIC7 = get_label_space("basic7")
N_LABELLED, N_PSEUDO, N_UNLABELLED = 120, 40, 40


@pytest.fixture(scope="module")
def ray_session(fer2013_dir: Path) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


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
        "unlabelled": ray.data.from_items([{"image": b, "idx": i} for i, (b, _) in enumerate(unl)], override_num_blocks=1),
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


# ---------------------------------------------------------------- Ray Train


def test_crash_resume_then_finished_run_is_not_retrained(tmp_path: Path, datasets: dict[str, Any]) -> None:
    import torch

    from engine.models.checkpoint import load_checkpoint

    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.03, max_failures=0, seed=3)
    out = tmp_path / "student.pt"
    with pytest.raises(EngineError, match=f"(?s){tmp_path / 'ray' / 'student'}.*run_name='student'"):
        _train(tmp_path, "student", cfg, datasets, fault_after_epoch=0)
    assert not out.exists()

    resumed = _train(tmp_path, "student", cfg, datasets)
    assert (resumed["epochs"], resumed["epochs_run"], resumed["resumed_from_epoch"]) == (2, 1, 1)
    assert [r["epoch"] for r in resumed["history"]] == [0, 1]
    assert len({r["call_id"] for r in resumed["history"]}) == 2  # epoch 0 by the crashed call, epoch 1 by this one
    for rec in resumed["history"]:
        assert (rec["images"], rec["steps"], rec["unlabelled_images"]) == (N_LABELLED + N_PSEUDO, 5, 0)
        assert rec["mask_rate"] is None and rec["thresholds"] is None
    assert math.isfinite(resumed["train_loss"]) and resumed["train_loss"] > 0
    assert resumed["history"][0]["lr"] == pytest.approx(0.03)
    assert resumed["history"][1]["lr"] == pytest.approx(0.03 * cosine_factor(5, total_steps=10))
    assert resumed["mask_rate"] is None and resumed["online_policy"] is None
    assert (Path(resumed["ray_checkpoint"]) / STATE_FILE).is_file()
    assert not (Path(resumed["ray_checkpoint"]) / POLICY_FILE).exists()

    loaded = load_checkpoint(str(out), expect_label_space=BASIC7, expect_input_size=48)
    assert loaded.fingerprint == resumed["fingerprint"]
    assert loaded.extra["train"]["epochs"] == 2
    with torch.no_grad():
        assert loaded.model(torch.zeros(3, 1, 48, 48)).shape == (3, len(BASIC7))

    again = _train(tmp_path, "student", cfg, datasets)
    assert (again["epochs"], again["epochs_run"], again["resumed_from_epoch"]) == (2, 0, 2)
    assert again["fingerprint"] == resumed["fingerprint"]
    assert again["history"] == resumed["history"]


def test_online_dtm_r_reports_mask_rate_and_checkpoints_policy(tmp_path: Path, datasets: dict[str, Any]) -> None:
    from engine.thresholds import get_policy, learning_effect

    params = {"tau": 0.3, "tau_min": 0.2, "mapping": "convex", "warmup": True, "never_label": ["Disgust"]}
    cfg = TrainConfig(
        epochs=1, batch_size=32, lr=0.03, online_policy="dtm_r", mu=1, balanced_sampling=True, max_failures=0
    )
    res = _train(
        tmp_path,
        "online",
        cfg,
        datasets,
        pseudo=None,
        unlabelled=datasets["unlabelled"],
        num_unlabelled=N_UNLABELLED,
        policy_params=params,
    )
    rec = res["history"][-1]
    assert (res["epochs"], res["epochs_run"], res["online_policy"]) == (1, 1, "dtm_r")
    assert rec["unlabelled_images"] == 32 * rec["steps"]
    assert 0.0 <= res["mask_rate"] <= 1.0
    assert math.isfinite(res["train_loss"]) and rec["loss_u"] >= 0.0

    state = json.loads((Path(res["ray_checkpoint"]) / POLICY_FILE).read_text())
    assert state["policy"] == "dtm_r" and state["params"]["never_label"] == [BASIC7.index("Disgust")]
    cache = np.array(state["state"]["cache"])
    assert cache.shape == (N_UNLABELLED,) and cache.min() >= -1 and cache.max() < len(BASIC7)
    # The saved state reproduces the reported thresholds, both through the policy and from the formula.
    policy = get_policy("dtm_r", state["params"], num_classes=len(BASIC7))
    policy.load_state_dict(state)
    assert _json_thresholds(policy.thresholds()) == res["thresholds"]
    counts = np.bincount(cache + 1, minlength=len(BASIC7) + 1)
    beta = learning_effect(counts[1:], int(counts[0]), warmup=True) if (cache >= 0).any() else np.zeros(7)
    expected = np.maximum(0.2, 0.3 * beta / (2 - beta))
    expected[BASIC7.index("Disgust")] = np.inf
    assert _json_thresholds(expected) == res["thresholds"]


def _json_thresholds(t: np.ndarray) -> list[float | None]:
    from engine.thresholds import thresholds_to_json

    return thresholds_to_json(t)

