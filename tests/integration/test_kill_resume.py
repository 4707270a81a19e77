"""SIGKILL the round driver during round 1's training, run the same command again: the round resumes where it died.

Checks: the Ray processes the killed driver started die with it; the re-run skips every committed stage (ingest,
partition, round 0, round 1's score/threshold/select), continues training from the epoch after the last checkpoint
(no epoch trained twice), finishes into the same MLflow child run, which holds each epoch's metrics once, and leaves
no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.processes import Proc, descendants, kill_all, leftovers, tiny_overrides, wait_gone, with_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4


def _snapshot(root: Path) -> dict[str, Any] | None:
    """Round 1's Ray Train checkpoint manager snapshot (None before the first epoch is committed)."""
    found = sorted((root / "campaigns/demo/rounds/r001/train/ray").glob("*/checkpoint_manager_snapshot.json"))
    if not found:
        return None
    try:
        return dict(json.loads(found[0].read_text()))
    except (OSError, ValueError):  # being replaced right now
        return None


def _latest_epoch(snap: dict[str, Any] | None) -> int | None:
    latest = (snap or {}).get("latest_checkpoint_result")
    return None if latest is None else int(latest["metrics"]["epoch"])


def test_sigkill_mid_training_then_rerun_resumes_same_round_and_run(
    tiny_campaign: Any, fer2013_dir: Path, tmp_path: Path
) -> None:
    root = tiny_campaign.copy_sources(tmp_path / "store")  # ingest committed: the driver starts at the partition
    cmd = [sys.executable, "jobs/pseudo_round.py", "--all", "--config", "conf/demo.yaml"]
    cmd += tiny_overrides(root, fer2013_dir, epochs=EPOCHS)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    log1 = tmp_path / "run1.log"
    ray_procs: set[Proc] = set()
    with open(log1, "w") as out:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 900
            while _latest_epoch(_snapshot(root)) is None:
                assert driver.poll() is None, f"driver exited ({driver.returncode}) early:\n{log1.read_text()[-5000:]}"
                assert time.monotonic() < deadline, "round 1 training wrote no checkpoint in 900 s"
                time.sleep(0.1)
            ray_procs = descendants(driver.pid)  # GCS, raylet, agents, workers (the Train worker among them)
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    # The local Ray the driver started (GCS, raylet, workers) shares its fate; with ray[default] installed, the
    # dashboard / runtime-env agents can outlive it by minutes: whatever is left is killed here, so the re-run
    # below starts a fresh local Ray exactly as a user's second command would. The GCS and raylet go within seconds;
    # a longer grace only waits on the agents, which are killed anyway.
    survivors = wait_gone(ray_procs, timeout=10)
    kill_all(survivors)
    assert len(ray_procs) >= 3, f"the driver had {len(ray_procs)} child processes: was its Ray local?"
    assert not wait_gone(survivors, timeout=30), "processes of the killed driver survived SIGKILL"

    last = _latest_epoch(_snapshot(root))
    assert last is not None and last < EPOCHS - 1, f"killed too late (last committed epoch {last})"
    campaign = json.loads((root / "campaigns/demo/campaign.json").read_text())
    run_id = campaign["rounds"]["1"]["mlflow_run_id"]
    assert campaign["rounds"]["1"]["status"] == "running"
    r0 = root / "campaigns/demo/rounds/r000/round.json"
    r0_before = r0.read_bytes()
    assert not (root / "campaigns/demo/rounds/r001/round.json").exists()

    marker = f"ENGINE_TEST_JOB=rerun-{os.getpid()}"  # inherited by every process the re-run starts (Ray's too)
    try:
        again = subprocess.run(
            cmd, cwd=REPO, env=env | dict([marker.split("=", 1)]), capture_output=True, text=True, timeout=900
        )
        left = leftovers(marker)  # a job that ends leaves nothing behind: Ray's node, the Train controller, workers
    finally:
        kill_all(with_env(marker))
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert left == []
    assert r0.read_bytes() == r0_before
    doc = json.loads((root / "campaigns/demo/rounds/r001/round.json").read_text())
    stages = doc["stages"]
    assert [stages[s]["skipped"] for s in ("score", "threshold", "select", "train", "evaluate")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    train = stages["train"]["counts"]
    assert (train["resumed_from_epoch"], train["epochs_run"], train["epochs"]) == (last + 1, EPOCHS - last - 1, EPOCHS)
    # The final checkpoint's history: epochs 0..last from the killed call, the rest from the re-run, none twice.
    snap = _snapshot(root)
    assert snap is not None and _latest_epoch(snap) == EPOCHS - 1
    name = snap["latest_checkpoint_result"]["checkpoint_dir_name"]
    ckpt = next((root / "campaigns/demo/rounds/r001/train/ray").glob(f"*/{name}"))
    history = json.loads((ckpt / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    calls = [h["call_id"] for h in history]
    assert len(set(calls[: last + 1])) == 1 and len(set(calls[last + 1 :])) == 1 and calls[0] != calls[-1]
    # "nothing to do" output of the ingest/partition stages of the re-run
    assert "ingest fer2013: skipped" in again.stdout + again.stderr
    assert "partition demo: skipped" in again.stdout + again.stderr
    # Quiet console: nothing from Ray's workers or Ray Data's non-TTY progress blocks (they stay in Ray's logs).
    assert "(RayTrainWorker" not in again.stderr and "logging_progress" not in again.stderr

    # Same MLflow child run, exactly one child per round, each epoch logged once.
    assert doc["mlflow_run_id"] == run_id
    state = json.loads((root / "campaigns/demo/campaign.json").read_text())
    assert state["rounds"]["1"] == {**state["rounds"]["1"], "status": "done", "mlflow_run_id": run_id}
    from engine.tracking import Tracker, default_artifact_root, default_uri

    tracker = Tracker(default_uri(str(root)), "fer-pseudolabel", default_artifact_root(str(root)))
    kids = tracker.children(state["mlflow_run_id"])
    assert [(k.round_index, k.status) for k in kids] == [(0, "FINISHED"), (1, "FINISHED")]
    assert kids[1].run_id == run_id
    # Each epoch is logged exactly once: the training controller logs an epoch only after registering its checkpoint
    # (an epoch the killed run finished but never registered is trained and logged again by the re-run, once), and
    # the re-run backfills an epoch registered but not yet logged when the kill landed.
    logged = tracker.metric_history(run_id, "train/train_loss")
    assert [s for s, _ in logged] == list(range(EPOCHS))
    assert [v for _, v in logged] == pytest.approx([h["train_loss"] for h in history])
