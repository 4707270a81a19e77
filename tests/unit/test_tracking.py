"""Unit tests of engine.tracking on a real sqlite MLflow store, and of engine.plots (PNG artifacts)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from engine import plots
from engine.tracking import MAX_PARAM_VALUE_CHARS, Tracker, default_artifact_root, default_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, Path]:
    """One sqlite store for the module: creating the DB (migrations) is the slow part."""
    root = tmp_path_factory.mktemp("storage")
    tracker = Tracker(default_uri(str(root)), "unit-test", default_artifact_root(str(root)))
    return tracker, root


def test_default_uri_and_artifact_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert default_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert default_uri(str(tmp_path)).startswith("sqlite:////")  # 4 slashes: absolute path
    assert default_artifact_root(str(tmp_path)) == f"{tmp_path}/mlartifacts"
    with caplog.at_level(logging.WARNING, logger="engine.tracking"):
        assert default_uri("s3://bucket/fer") == "sqlite:///./mlflow.db"
    assert "set tracking.uri" in caplog.text
    assert default_artifact_root("s3://bucket/fer/") == "s3://bucket/fer/mlartifacts"
    assert default_uri(f"file://{tmp_path}") == f"sqlite:///{tmp_path}/mlflow.db"


def test_campaign_with_two_rounds_resumed_by_id(store: tuple[Tracker, Path]) -> None:
    tracker, root = store
    assert (root / "mlflow.db").is_file()
    parent = tracker.ensure_campaign_run("demo", params={"train.epochs": 3}, tags={"engine.fingerprint": "abc"})
    r1 = tracker.ensure_round_run(parent, 1, params={"round": 1})
    r2 = tracker.ensure_round_run(parent, 2)
    assert len({parent, r1, r2}) == 3

    tracker.log_metrics(r1, {"eval/macro_f1": 0.5, "select/count/Anger": 12, "skipped": None}, step=0)
    tracker.set_terminated(r1, "FINISHED")
    assert tracker.get_run(r1).status == "FINISHED"

    # A later process: same ids -> same runs, history grows, status reopened then closed again.
    tracker2 = Tracker(tracker.uri, "unit-test", default_artifact_root(str(root)))
    assert tracker2.experiment_id == tracker.experiment_id
    assert tracker2.ensure_campaign_run("demo", parent) == parent
    assert tracker2.ensure_round_run(parent, 1, r1) == r1
    assert tracker2.get_run(r1).status == "RUNNING"
    tracker2.log_metrics(r1, {"eval/macro_f1": 0.75}, step=1)
    tracker2.set_terminated(r1)
    assert tracker2.metric_history(r1, "eval/macro_f1") == [(0, 0.5), (1, 0.75)]
    assert tracker2.metric_history(r1, "select/count/Anger") == [(0, 12.0)]
    assert tracker2.metric_history(r1, "skipped") == []

    kids = tracker2.children(parent)
    assert [(k.run_id, k.run_name, k.round_index, k.parent_id) for k in kids] == [
        (r1, "r001", 1, parent),
        (r2, "r002", 2, parent),
    ]
    assert kids[0].status == "FINISHED" and kids[1].status == "RUNNING"
    camp = tracker2.get_run(parent)
    assert camp.parent_id is None and camp.run_name == "demo"
    assert camp.tags["engine.campaign"] == "demo" and camp.tags["engine.fingerprint"] == "abc"
    assert tracker2.params(parent) == {"train.epochs": "3"}
    assert tracker2.params(r1) == {"round": "1"}


def test_stored_id_of_another_parent_or_unknown_gives_new_run(
    store: tuple[Tracker, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tracker, _ = store
    parent_a = tracker.ensure_campaign_run("a")
    parent_b = tracker.ensure_campaign_run("b")
    child_a = tracker.ensure_round_run(parent_a, 1)
    with caplog.at_level(logging.WARNING, logger="engine.tracking"):
        child_b = tracker.ensure_round_run(parent_b, 1, child_a)
        fresh = tracker.ensure_campaign_run("c", "0" * 32)
    assert child_b != child_a and tracker.get_run(child_b).parent_id == parent_b
    assert fresh != "0" * 32 and tracker.get_run(fresh).run_name == "c"
    assert f"has parent {parent_a}, expected {parent_b}" in caplog.text
    assert "is not in" in caplog.text
    assert [k.run_id for k in tracker.children(parent_a)] == [child_a]


def test_params_truncated_unchanged_skipped_changed_warned(
    store: tuple[Tracker, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tracker, _ = store
    rid = tracker.ensure_campaign_run("params")
    long_value = "x" * 2000
    tracker.log_params(rid, {"long": long_value, "a": 1, "t": (1, 2), "none": None})
    got = tracker.params(rid)
    assert len(got["long"]) <= MAX_PARAM_VALUE_CHARS and got["long"].startswith("x" * 480)
    assert got["a"] == "1" and got["t"] == "(1, 2)" and got["none"] == "None"
    with caplog.at_level(logging.WARNING, logger="engine.tracking"):
        caplog.clear()
        tracker.log_params(rid, {"long": long_value, "a": 1, "b": "new"})  # same values: no warning
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        tracker.log_params(rid, {"a": 2, "c": "also new"})
    assert "keeps its first value for 1 param(s)" in caplog.text and "a: '1' -> '2'" in caplog.text
    got = tracker.params(rid)
    assert (got["a"], got["b"], got["c"]) == ("1", "new", "also new")
    # 150 params: more than one MLflow batch.
    tracker.log_params(rid, {f"p{i:03d}": i for i in range(150)})
    assert len(tracker.params(rid)) == 6 + 150


def test_artifacts_and_plots(store: tuple[Tracker, Path], tmp_path: Path) -> None:
    tracker, root = store
    parent = tracker.ensure_campaign_run("art")
    rid = tracker.ensure_round_run(parent, 1)
    names = ["Neutral", "Anger", "Happiness"]
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    png = tmp_path / "eval" / "confusion.png"
    plots.confusion_png(cm, names, str(png), title="r001 test")
    bars = tmp_path / "thresholds.png"
    plots.bars_png({"r001": [0.9, 0.8, 0.7], "r002": [0.85, float("nan"), 0.6]}, names, str(bars), ylim=(0, 1))
    for p in (png, bars):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in png.parent.iterdir()) == ["confusion.png"]  # no temporary left behind
    (tmp_path / "eval" / "metrics.json").write_text("{}")

    tracker.log_artifact(rid, str(png.parent), "eval")
    tracker.log_artifact(rid, str(bars))
    assert tracker.list_artifacts(rid) == ["eval", "thresholds.png"]
    assert tracker.list_artifacts(rid, "eval") == ["eval/confusion.png", "eval/metrics.json"]
    stored = root / "mlartifacts" / rid / "artifacts" / "eval" / "confusion.png"
    assert stored.read_bytes() == png.read_bytes()

    with pytest.raises(ValueError, match=r"\(3, 3\) matrix for 3 class names, got shape \(2, 2\)"):
        plots.confusion_png(np.eye(2), names, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="series 'r1' has 2 values for 3 classes"):
        plots.bars_png({"r1": [1.0, 2.0]}, names, str(tmp_path / "bad.png"))
    assert not (tmp_path / "bad.png").exists()


def test_model_logged_registered_and_aliased_on_a_store_outside_the_working_directory(
    store: tuple[Tracker, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow resolves ``models:/`` URIs through its global tracking URI: the tracker must point it at its own store
    while logging and registering (a ``ray job submit`` driver runs in another directory than the store)."""
    import io

    import mlflow
    import torch
    from PIL import Image

    from engine.config import ModelConfig
    from engine.labels import get_label_space
    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model

    tracker, _ = store
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    monkeypatch.chdir(tmp_path)  # MLflow's default store would be ./mlruns or ./mlflow.db here: not the tracker's
    cfg = ModelConfig(name="tiny_cnn", input_size=48, in_chans=1)
    space = get_label_space("basic7")
    torch.manual_seed(0)
    ckpt = str(tmp_path / "student.pt")
    save_checkpoint(ckpt, create_model(cfg, len(space)), model_cfg=cfg, label_space=space)
    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)).save(buf, format="PNG")
    parent = tracker.ensure_campaign_run("models")
    run = tracker.ensure_round_run(parent, 0)
    before = mlflow.get_tracking_uri()
    uri = tracker.log_checkpoint_model(run, ckpt, example=buf.getvalue(), metadata={"round": 0})
    assert tracker.log_checkpoint_model(run, ckpt, example=buf.getvalue()) == uri  # logged once per run
    assert tracker.register_model("unit-models", uri, run) == tracker.register_model("unit-models", uri, run) == "1"
    tracker.set_alias("unit-models", "champion", "1")
    assert tracker.alias_version("unit-models", "champion") == tracker.model_version("unit-models", run) == "1"
    assert mlflow.get_tracking_uri() == before  # put back
    assert tracker.get_run(run).status == "RUNNING"  # the campaign closes the round's run, not the model logging
    # Nothing sticks: a second store registers into itself, not into the first one's registry.
    other_root = tmp_path / "other"
    other = Tracker(default_uri(str(other_root)), "unit-test", default_artifact_root(str(other_root)))
    run2 = other.ensure_round_run(other.ensure_campaign_run("models2"), 0)
    uri2 = other.log_checkpoint_model(run2, ckpt, example=buf.getvalue())
    assert other.register_model("unit-models-2", uri2, run2) == "1"
    assert other.model_version("unit-models-2", run2) == "1"
    assert tracker.model_version("unit-models-2", run2) is None
    assert {k: os.environ.get(k) for k in env_before} == env_before  # nothing exported to subprocesses
