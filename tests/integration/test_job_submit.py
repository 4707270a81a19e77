"""``ray job submit`` of jobs/pseudo_round.py to a ``ray start --head`` cluster on this machine: round 0 and round 1.

The cluster gets its own temp dir and free ports, so it never touches another session's Ray; it is always stopped
by killing exactly its processes (found by that temp dir), never with ``ray stop`` (which kills every Ray process on
the machine). Needs ``ray[default]`` (dashboard and job server).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.integration.processes import alive, free_port, kill_all, marked, tiny_overrides

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's (raylet env)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _dashboard_available() -> bool:
    try:
        import aiohttp_cors  # noqa: F401  (only in ray[default])
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _dashboard_available(), reason="ray job submit needs ray[default] (dashboard, job server)")
def test_job_submit_runs_round_0_and_1(tiny_campaign: Any, fer2013_dir: Path, tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    gcs, dash, client, agent = (free_port() for _ in range(4))
    env = _env()
    root = tiny_campaign.copy_sources(tmp_path / "store")  # ingest committed: the job starts at the partition
    try:
        start = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={gcs}",
                "--num-cpus=2",
                f"--temp-dir={temp_dir}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent}",
                "--disable-usage-stats",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                f"--address=http://127.0.0.1:{dash}",
                "--working-dir=.",
                "--",
                "python",
                "jobs/pseudo_round.py",
                "--all",
                "--config",
                "conf/demo.yaml",
                *tiny_overrides(root, fer2013_dir, epochs=1),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0, out[-6000:]
        assert "succeeded" in out, out[-6000:]
    finally:
        ours = marked(temp_dir)
        kill_all(ours)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not alive(ours), f"Ray processes of {temp_dir} still alive: {sorted(alive(ours))}"

    rounds = root / "campaigns" / "demo" / "rounds"
    docs = [json.loads((rounds / f"r{r:03d}" / "round.json").read_text()) for r in (0, 1)]
    assert [d["round"] for d in docs] == [0, 1]
    # The job's numbers are the committed files' numbers: val rows = labelled val rows without a training twin,
    # macro-F1 = the evaluate stage's, scored rows = the pool (train/unlabelled rows outside the labelled set).
    manifest = pq.read_table(root / "sources/fer2013/manifest").to_pandas()
    labelled = pq.read_table(root / "campaigns/demo/partition/labelled.parquet").to_pandas()
    val = manifest[(manifest.split == "val") & (manifest.label >= 0)]
    evaluable = val[~val.leak_with.fillna("").str.contains("train|unlabelled")]
    pool = manifest[
        manifest.split.isin(["train", "unlabelled"]) & manifest.leak_with.isna() & ~manifest.key.isin(labelled.key)
    ]
    for r, d in enumerate(docs):
        metrics = json.loads((rounds / f"r{r:03d}" / "eval" / "metrics.json").read_text())
        assert d["metrics"]["val/n"] == metrics["val"]["n"] == len(evaluable) > 0
        assert d["metrics"]["val/macro_f1"] == metrics["val"]["macro_f1"]
    assert docs[1]["stages"]["score"]["counts"]["rows"] == len(pool) > 0
    state = json.loads((root / "campaigns" / "demo" / "campaign.json").read_text())
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "done"]
    from engine.tracking import Tracker, default_artifact_root, default_uri

    tracker = Tracker(default_uri(str(root)), "fer-pseudolabel", default_artifact_root(str(root)))
    kids = tracker.children(state["mlflow_run_id"])
    assert [(k.round_index, k.run_id) for k in kids] == [(r, d["mlflow_run_id"]) for r, d in enumerate(docs)]
    assert [state["rounds"][r]["mlflow_run_id"] for r in ("0", "1")] == [d["mlflow_run_id"] for d in docs]
    # The job printed the campaign summary (driver output reaches `ray job submit` through the job logs).
    assert "round r001:" in out
    # Quiet console: Ray's workers and Ray Data's progress blocks stay in Ray's logs, whose folder is printed once.
    assert "(RayTrainWorker" not in out and "logging_progress" not in out and "(PlacementGroupCleaner" not in out
    assert out.count("Ray's own logs (workers, Ray Data, Ray Train): ") == 1
    assert "ingest fer2013: skipped" in out  # the shared campaign's ingest, found committed (same fingerprint)
