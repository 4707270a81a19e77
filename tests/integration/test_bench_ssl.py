"""bench/ssl_fer2013.py on a tiny setting (a few hundred images, 1 epoch, 1 round), so the benchmark cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.fixtures import load_script

REPO = Path(__file__).resolve().parents[2]


def _bench():
    return load_script("bench/ssl_fer2013.py", "ssl_fer2013")


def test_ssl_benchmark_tiny_writes_table_rounds_and_mlflow(ray_local, fer2013_dir, tmp_path):
    out = tmp_path / "ssl.md"
    argv = ["--preset", "tiny", "--root", str(tmp_path / "runs"), "--fer2013", str(fer2013_dir), "--out", str(out)]
    # In process (Ray Train's local mode): the same students as the Ray Train workers (test_train.py), without
    # their start-up in each of the three trainings; the tiny campaign fixture and test_train cover Ray Train.
    results = _bench().main([*argv, "--rows", "sup100", "dtmr05", "--set", "train.in_process=true"])

    by_row = {r["row"]: r for r in results}
    assert list(by_row) == ["sup10", "sup100", "dtmr05"]
    assert [r["round"] for r in by_row["sup10"]["rounds"]] == [0]
    assert [r["round"] for r in by_row["dtmr05"]["rounds"]] == [0, 1]
    # Offline rows start from the supervised 10 % student: their round 0 is that checkpoint, evaluated again.
    r0 = by_row["dtmr05"]["rounds"][0]
    assert r0["student"] == by_row["sup10"]["rounds"][0]["student"]
    assert r0["test_f1"] == by_row["sup10"]["test_f1"]
    r1 = by_row["dtmr05"]["rounds"][1]
    assert set(r1["thresholds"]) == {"Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"}
    sel_path = Path(r1["student"]).parents[1] / "select" / "selection.parquet"
    assert r1["quality"]["selected"] == pq.read_metadata(tmp_path / "runs" / sel_path).num_rows

    text = out.read_text()
    for label in ("1 supervised 10 %", "2 supervised 100 %", "4 DTM-R τmin 0.5", "## Per round"):
        assert label in text
    assert json.loads(out.with_suffix(".json").read_text()) == results
    from PIL import Image

    with Image.open(out.with_suffix(".png")) as png:  # the plot: 7 x 4.5 inches at 120 dpi
        assert (png.format, png.size) == ("PNG", (840, 540))

    from engine.tracking import Tracker, default_artifact_root, default_uri

    root = str(tmp_path / "runs")
    tracker = Tracker(default_uri(root), "fer-pseudolabel", default_artifact_root(root))
    kids = tracker.children(by_row["dtmr05"]["mlflow_run_id"])
    assert [k.round_index for k in kids] == [0, 1]
