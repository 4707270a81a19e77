"""A real Label Studio round trip: the engine's review batch becomes a Label Studio project (its labeling config,
local-files storage rooted at the export folder, the tasks with the teacher's pre-annotation), one face is labelled
in headless Chromium as a person would, the others through the API (one of them skipped), and the engine's import of
Label Studio's JSON export gives exactly those labels, counts and annotators.

Label Studio lives in its own virtual environment (``make labelstudio``: ``.venv-labelstudio``; or set
``LABEL_STUDIO_BIN``), as its pins clash with the engine's; the server runs on 127.0.0.1 with its sqlite store in a
temporary folder. Verified commands: ../shared/reference/label-studio.md."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.campaign import run_campaign
from engine.io import fs
from engine.layout import SUCCESS, CampaignLayout, join
from tests.integration.processes import free_port, wait_healthy
from tests.integration.test_report_export import CHROMIUM, CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[2]
LABEL_STUDIO = Path(os.environ.get("LABEL_STUDIO_BIN", REPO / ".venv-labelstudio/bin/label-studio"))
EMAIL, PASSWORD = "reviewer@example.com", "engine-review-1"
B = 5


class LabelStudio:
    """A Label Studio server of this test: its URL and the first user's API token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Token {self.token}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
        return json.loads(text) if text else None


@pytest.fixture
def review_batch(tiny_campaign, tmp_path, monkeypatch):
    """A tiny campaign (a given teacher: no training) whose round 1 stops with a batch of B faces for people, made by
    ``fer-engine review export`` as a user would (refused before round 0 has run, and once the batch exists)."""
    from engine.config import load_config

    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    sets = tiny_campaign.given_teacher_sets("ls", ["curation.label_issues=false"])
    cfg = load_config([REPO / "conf/demo.yaml"], sets)
    cli = [sys.executable, "-m", "engine.cli", "review", "export", "--config", str(REPO / "conf/demo.yaml")]
    cli += [a for s in sets for a in ("--set", s)]
    early = subprocess.run([*cli, "--size", str(B)], capture_output=True, text=True, check=False)
    assert early.returncode == 2 and early.stderr.count("\n") == 1, early.stderr  # no teacher before round 0 ran
    assert "has no teacher yet: round r000 trains it" in early.stderr
    run_campaign(dataclasses.replace(cfg, campaign=dataclasses.replace(cfg.campaign, rounds=0)))  # round 0 only
    done = subprocess.run([*cli, "--size", str(B), "--rule", "entropy"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "waiting for people: round r001's review batch is in campaigns/ls/rounds/r001/review" in done.stdout
    again = subprocess.run([*cli, "--size", str(B)], capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "round r001 already has review batch" in again.stderr
    return cfg, CampaignLayout(str(root), "ls").round(1)


@pytest.fixture
def label_studio(review_batch, tmp_path):
    if not LABEL_STUDIO.exists():
        pytest.skip(f"{LABEL_STUDIO} is absent: make labelstudio (its own virtual environment)")
    _, lay = review_batch
    port, token = free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": lay.review_dir,  # the export folder: ?d=images/... resolves
        "LABEL_STUDIO_USERNAME": EMAIL,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    log = open(tmp_path / "label-studio.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(LABEL_STUDIO), "start", "--no-browser", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/health", proc, tmp_path / "label-studio.log", 180)
        yield LabelStudio(url, token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_review_batch_round_trips_through_label_studio(review_batch, label_studio, tmp_path):
    from playwright.sync_api import sync_playwright

    from engine.review.answers import import_answers

    cfg, lay = review_batch
    ls = label_studio
    project_doc = json.loads(Path(lay.review_dir, "project.json").read_text())
    config = Path(lay.review_dir, "label_config.xml").read_text()
    project = ls.call("POST", "/api/projects", {"title": project_doc["title"][:50], "label_config": config})
    pid = project["id"]
    ls.call(
        "POST",
        "/api/storages/localfiles",
        {"project": pid, "path": join(lay.review_dir, "images"), "use_blob_urls": False, "title": "faces"},
    )
    tasks = json.loads(Path(lay.review_dir, "tasks.json").read_text())
    imported = ls.call("POST", f"/api/projects/{pid}/import", tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (B, B)
    listed = ls.call("GET", f"/api/projects/{pid}/tasks?page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    by_key = {t["data"]["key"]: t["id"] for t in listed}
    batch = pq.read_table(lay.review_batch).to_pandas()
    keys = batch.key.tolist()
    assert sorted(by_key) == sorted(keys)

    def choices(name: str) -> list[dict[str, Any]]:
        return [{"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]

    # Faces 2..5 through the API: Fear, not a face, unsure, and one skipped (cancelled) task.
    ls.call("POST", f"/api/tasks/{by_key[keys[1]]}/annotations", {"result": choices("Fear")})
    ls.call("POST", f"/api/tasks/{by_key[keys[2]]}/annotations", {"result": choices("not a face")})
    ls.call("POST", f"/api/tasks/{by_key[keys[3]]}/annotations", {"result": choices("unsure")})
    ls.call("POST", f"/api/tasks/{by_key[keys[4]]}/annotations", {"result": [], "was_cancelled": True})

    # Face 1 in the browser, as a person: log in, open the task, see the teacher's guess, click Sadness, submit.
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(ls.url + "/user/login/")
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{ls.url}/projects/{pid}/data?tab=&task={by_key[keys[0]]}")
        page.wait_for_selector('label:has-text("Sadness")', timeout=60_000)
        page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth > 0)")
        shot = os.environ.get("ENGINE_LABEL_STUDIO_SCREENSHOT")  # docs/img/label_studio_task.png is made this way
        if shot:
            page.screenshot(path=shot)
        page.click('label:has-text("Sadness")')
        page.click('button:has-text("Submit")')
        page.wait_for_selector("text=Annotation saved successfully", timeout=30_000)
        browser.close()

    export = ls.call("GET", f"/api/projects/{pid}/export?exportType=JSON")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    counts = import_answers(cfg, str(path))
    answers = pq.read_table(lay.answers).to_pandas().set_index("key")
    assert answers.loc[keys, "answer"].tolist() == ["Sadness", "Fear", "not a face", "unsure", "skipped"]
    assert answers.loc[keys, "label"].tolist() == [
        5,
        3,
        -1,
        -1,
        -1,
    ]  # basic7: Neutral Anger Disgust Fear Happiness Sadness
    assert answers.loc[keys, "submitted"].tolist() == [1, 1, 1, 1, 0]
    assert answers.loc[keys, "cancelled"].tolist() == [0, 0, 0, 0, 1]
    users = {tuple(a) for a in answers.loc[keys[:4], "annotators"]}
    assert len(users) == 1 and len(next(iter(users))) == 1  # the one user: in the browser and through the API
    assert answers.loc[keys[0], "lead_time_s"] > 0  # the browser measured the person's time on the task
    assert counts["labelled"] == 2 and counts["per_answer"] == {
        "Fear": 1,
        "Sadness": 1,
        "not a face": 1,
        "skipped": 1,
        "unsure": 1,
    }
    assert fs.read_json(join(lay.answers_dir, SUCCESS))["batch"] == project_doc["batch"]
    assert all(t["data"]["batch"] == project_doc["batch"] for t in export)
