"""One driver per campaign: two ``jobs/campaign.py`` on one new root, the second started while the first drives.
The first completes; the second is refused in one line naming the first (pid, host, start) before it starts Ray or
writes anything, so the MLflow store holds one campaign run. (``bench/two_drivers.py`` repeats the race at 1, 3
and 10 s apart.)"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from engine.layout import CampaignLayout
from tests.integration.processes import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _driving_pid(lock: Path) -> int | None:
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_driver_is_refused_in_one_line_and_the_store_holds_one_campaign(
    ray_local, tiny_campaign, fer2013_dir, tmp_path
):
    from mlflow import MlflowClient

    root = tmp_path / "store"
    tiny_campaign.copy_sources(root)  # ingest committed already: the first driver goes straight to its rounds
    cmd = [sys.executable, "jobs/campaign.py", "--config", "conf/demo.yaml", *tiny_overrides(root, fer2013_dir, 1)]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = Path(CampaignLayout(str(root), "demo").dir + ".lock")
    deadline = time.monotonic() + 120
    while _driving_pid(lock) != first.pid:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    # RAY_ADDRESS names a port where nothing listens: a second driver that got as far as Ray would hang there
    second = subprocess.run(
        cmd, cwd=REPO, env={**env, "RAY_ADDRESS": "127.0.0.1:1"}, capture_output=True, text=True, timeout=60
    )
    assert (second.returncode, second.stdout, second.stderr.count("\n")) == (2, "", 1), second.stderr[-3000:]
    assert second.stderr.startswith(
        f"error: campaign demo: {CampaignLayout(str(root), 'demo').dir} is being written by pid {first.pid} on "
        f"{socket.gethostname()} (since "
    )
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    after = {str(p.relative_to(root)) for p in root.rglob("*")}
    # The refused driver removed nothing (and the first went on): every file seen while the first drove is still
    # there, but for what the first driver itself ends on commit (a stage's _RUNNING.json, an atomic write's
    # temporary name): with Ray started lazily it is already running its partition when the second one is refused.
    transient = re.compile(r"(^|/)_RUNNING\.json$|\.tmp-[0-9a-f]{12}$")
    assert {p for p in before if not transient.search(p)} <= after
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    campaigns = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.data.tags.get("engine.campaign") for r in campaigns] == ["demo"]
    assert sorted(r.data.tags.get("mlflow.runName") for r in runs if r not in campaigns) == ["r000", "r001"]
