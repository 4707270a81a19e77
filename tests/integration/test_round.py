"""A whole campaign (round 0 + round 1) on a tiny real FER2013 subset: exact counts across files, idempotent re-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.campaign import run_campaign
from engine.config import load_config
from engine.io import fs
from engine.layout import CampaignLayout

REPO = Path(__file__).resolve().parents[2]


def _cfg(root, fer2013_dir):
    return load_config(
        [REPO / "conf/demo.yaml"],
        [
            f"storage.root={root}",
            f"sources.fer2013.path={fer2013_dir}",
            "sources.fer2013.limit=150",
            "model.name=tiny_cnn",
            "ingest.samples_per_shard=100",
            "campaign.max_labelled=null",
            "campaign.max_unlabelled=null",
            "campaign.max_eval=null",
            "campaign.labelled_fraction=0.3",
            "campaign.stop_when_no_gain=false",
            "train.epochs=2",
            "train.val_from=0",
            "train.batch_size=32",
            "threshold.policy=fixed",
            "threshold.tau=0.2",
            "select.cap_multiple_of_labelled=null",
        ],
    )


def test_campaign_round_counts_match_files_and_rerun_skips(ray_local, fer2013_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(".", fer2013_dir)  # a relative storage root, as in conf/demo.yaml (Ray Train needs it made absolute)
    state = run_campaign(cfg)
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "done"]
    lay = CampaignLayout(str(tmp_path), "demo")
    r1 = fs.read_json(lay.round(1).state)

    manifest = pq.read_table(tmp_path / "sources/fer2013/manifest").to_pandas()
    labelled = pq.read_table(lay.partition_dir + "/labelled.parquet").to_pandas()
    pool = manifest[
        manifest.split.isin(["train", "unlabelled"]) & manifest.leak_with.isna() & ~manifest.key.isin(labelled.key)
    ]
    assert r1["stages"]["score"]["counts"]["rows"] == len(pool)
    parts = sorted((tmp_path / "campaigns/demo/rounds/r001/score").glob("part-*.parquet"))
    scores = pq.ParquetDataset([str(p) for p in parts]).read(columns=["key", "conf", "pred"]).to_pandas()
    assert sorted(scores.key) == sorted(pool.key)
    selection = pq.read_table(lay.round(1).selection).to_pandas()
    passing = scores[scores.conf >= 0.2]
    assert r1["stages"]["select"]["counts"]["selected"] == len(selection) == len(passing)
    assert sorted(selection.key) == sorted(passing.key)
    assert not set(selection.key) & set(manifest[manifest.leak_with.notna()].key)
    metrics = fs.read_json(lay.round(1).metrics)
    evaluable = manifest[
        (manifest.split == "val")
        & (manifest.label >= 0)
        & ~manifest.leak_with.fillna("").str.contains("train|unlabelled")
    ]
    assert metrics["val"]["n"] == len(evaluable) == r1["metrics"]["val/n"]
    assert r1["quality"]["selected"] == len(selection)

    # select_best (conf/demo.yaml): each round's student is its best val epoch, recorded in round.json; evaluating
    # the kept checkpoint on val gives exactly the macro-F1 the worker measured for that epoch.
    for r in (0, 1):
        doc = fs.read_json(lay.round(r).state)
        train = doc["stages"]["train"]["counts"]
        history = json.loads(
            sorted((tmp_path / f"campaigns/demo/rounds/r{r:03d}/train").rglob("history.json"))[-1].read_text()
        )
        val_f1 = [h["val_macro_f1"] for h in history]
        assert len(val_f1) == 2 and train["best_epoch"] == int(np.argmax(val_f1))
        assert train["best_val_macro_f1"] == max(val_f1) == pytest.approx(doc["metrics"]["val/macro_f1"], abs=1e-12)

    from engine.tracking import Tracker, default_artifact_root, default_uri

    tracker = Tracker(default_uri(str(tmp_path)), cfg.tracking.experiment, default_artifact_root(str(tmp_path)))
    kids = tracker.children(state["mlflow_run_id"])
    assert [k.round_index for k in kids] == [0, 1]

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in p.name}
    again = run_campaign(cfg)
    assert again["rounds"] == state["rounds"]
    changed = [
        p
        for p, t in mtimes.items()
        if p.exists()
        and p.stat().st_mtime_ns != t
        and p.name != "campaign.json"
        and p.suffix != ".db"
        and "mlartifacts" not in str(p)
        and "config.json" not in p.name
    ]
    assert changed == []
