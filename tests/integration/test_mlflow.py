"""MLflow as its users see it, on the shared tiny campaign: each round's student is a registered model version that
loads through MLflow and predicts exactly what the engine checkpoint predicts, the ``champion`` alias follows the
teacher, the labelled set and the selection are run inputs, round runs carry their own params, and the MLflow UI
(a real ``mlflow server`` in headless Chromium) shows the campaign's rounds nested with their datasets and the
registered model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine.io import fs
from engine.layout import CampaignLayout, root_path
from tests.integration.processes import free_port, wait_healthy
from tests.integration.test_report_export import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def store(tiny_campaign):
    from mlflow import MlflowClient

    from engine.tracking import default_uri

    uri = default_uri(str(tiny_campaign.root))
    return tiny_campaign, uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def _images(root: Path, n: int) -> list[bytes]:
    from engine.io.tars import read_images
    from engine.layout import shard_tar

    rows = pq.read_table(root / "sources/fer2013/manifest", columns=["key", "shard"]).to_pylist()[:n]
    out = []
    for r in rows:
        out.append(read_images(shard_tar(str(root), r["shard"]), {r["key"]})[r["key"]])
    return out


def test_champion_loads_through_mlflow_with_the_checkpoint_probabilities(store):
    import mlflow

    from engine.imaging import decode_pixels
    from engine.models.teacher import CheckpointTeacher

    campaign, uri, client = store
    state = campaign.state
    rounds = state["rounds"]
    versions = sorted(client.search_model_versions("name = 'demo'"), key=lambda v: int(v.version))
    assert [(str(v.version), v.tags["round"], v.run_id) for v in versions] == [
        ("1", "0", rounds["0"]["mlflow_run_id"]),
        ("2", "1", rounds["1"]["mlflow_run_id"]),
    ]
    teacher_round = state["teacher"]["round"]
    champion = client.get_model_version_by_alias("demo", "champion")
    assert (str(champion.version), rounds[str(teacher_round)]["model_version"]) == (str(teacher_round + 1),) * 2

    from engine.tracking import global_uris

    with global_uris(uri):  # what a user does with mlflow.set_tracking_uri, put back after
        model = mlflow.pyfunc.load_model("models:/demo@champion")
        local = Path(mlflow.artifacts.download_artifacts("models:/demo@champion"))
    images = _images(campaign.root, 40)
    out = model.predict(pd.DataFrame({"image": images}))
    teacher = CheckpointTeacher(root_path(str(campaign.root), state["teacher"]["paths"][0]))
    ref = teacher.predict([decode_pixels(b) for b in images]).probs
    names = list(teacher.label_space.classes)
    assert list(out.columns) == [*names, "label"]
    np.testing.assert_allclose(out[names].to_numpy(), ref, rtol=0, atol=1e-6)
    assert out["label"].tolist() == [names[i] for i in ref.argmax(1)]
    assert model.metadata.get_input_schema().input_names() == ["image"]
    assert model.metadata.metadata["round"] == teacher_round
    # Models from code: the model is the engine's source file and the checkpoint, no pickle.
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "artifacts/student.pt" in files and "pyfunc_model.py" in files


def test_datasets_are_run_inputs_and_rounds_carry_their_params(store):
    from engine.tracking import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, Tracker, default_artifact_root

    campaign, uri, client = store
    state, root = campaign.state, campaign.root
    tracker = Tracker(uri, campaign.cfg.tracking.experiment, default_artifact_root(str(root)))
    partition_fp = state["prepared"]["partition"]["fingerprint"]
    select_fp = fs.read_json(CampaignLayout(str(root), "demo").round(1).state)["stages"]["select"]["fingerprint"]
    labelled = ("demo/labelled", partition_fp[:36], "training")
    assert tracker.run_inputs(state["mlflow_run_id"]) == [labelled]
    assert tracker.run_inputs(state["rounds"]["0"]["mlflow_run_id"]) == [labelled]
    assert tracker.run_inputs(state["rounds"]["1"]["mlflow_run_id"]) == [
        labelled,
        ("demo/selection", select_fp[:36], "pseudo_labels"),
    ]
    p0, p1 = (tracker.params(state["rounds"][r]["mlflow_run_id"]) for r in ("0", "1"))
    assert (p0["round"], p0["model.name"], p0["train.epochs"]) == ("0", "tiny_cnn", "2")
    assert (p1["round"], p1["model.name"], p1["train.epochs"]) == ("1", "small_cnn", "2")  # student.model applied
    assert not [k for k in p0 if k.startswith(("threshold.", "select."))]
    assert (p1["threshold.policy"], p1["threshold.tau"], p1["select.cap_per_class"]) == ("fixed", "0.0", "10")
    assert client.get_experiment(tracker.experiment_id).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND


def test_mlflow_ui_shows_nested_rounds_datasets_and_the_registered_model(store, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    campaign, uri, _ = store
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  (closed below, after the server)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        log.flush()
        wait_healthy(base + "/health", server, tmp_path / "server.log", 90)
        exp = campaign.state["mlflow_experiment_id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning")
            page.get_by_text("demo", exact=True).first.wait_for(timeout=60_000)
            page.locator("button[data-component-id*=runnamecellrenderer]").first.click()  # the parent's [+]
            page.get_by_text("r001", exact=True).wait_for(timeout=30_000)
            runs_text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
            page.goto(f"{base}/#/models/demo")
            page.get_by_text("Version 2").wait_for(timeout=30_000)
            versions = {
                v: page.get_by_role("row").filter(has_text=f"Version {v}").first.inner_text() for v in ("1", "2")
            }
            page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    lines = [s.strip() for s in runs_text.splitlines() if s.strip()]
    assert "3 matching runs" in lines
    at = {name: lines.index(name) for name in ("demo", "r000", "r001")}
    assert at["demo"] < at["r001"] < at["r000"]  # children under their parent, newest first
    labelled = f"demo/labelled ({campaign.state['prepared']['partition']['fingerprint'][:36]})"
    assert lines.count(labelled) == 3  # the campaign run and both rounds
    assert sum(s.startswith("demo/selection (") for s in lines) == 1  # round 1's pseudo-labels
    teacher_version = str(campaign.state["teacher"]["round"] + 1)
    assert {v: "champion" in text for v, text in versions.items()} == {v: v == teacher_version for v in ("1", "2")}
    assert [versions[v].split("\n")[:4:2] for v in ("1", "2")] == [["Version 1", "round"], ["Version 2", "round"]]
    assert [versions[v].split("\n")[3] for v in ("1", "2")] == [": 0", ": 1"]  # the round tags
