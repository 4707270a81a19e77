"""The seed-method recipes (conf/recipes/{cfc_sp,esr,va,abaw_ensemble}.yaml): a 1-round campaign each on tiny real
FER2013 data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.campaign import run_campaign
from engine.config import load_config
from engine.io import fs
from engine.layout import CampaignLayout
from tests.fixtures import write_affectnet_va, write_affwild2_segments, write_affwild2_videos

COMMON = [
    "ingest.samples_per_shard=200",
    "eval.splits=[val]",
    "campaign.max_labelled=null",
    "campaign.max_unlabelled=null",
    "campaign.max_eval=null",
    "campaign.stop_when_no_gain=false",
    "train.epochs=1",
    "train.batch_size=32",
    "select.cap_multiple_of_labelled=null",
    # In process (Ray Train's local mode): bit-identical students (test_train.py) without Ray Train's start-up in
    # each training; the Ray Train path itself is covered by test_train, the shared tiny campaign and kill/resume.
    "train.in_process=true",
]


def _run(recipe: str, root: Path, overrides: list[str]) -> tuple[Any, dict[str, Any], CampaignLayout]:
    cfg = load_config([f"conf/recipes/{recipe}.yaml"], [f"storage.root={root}", *COMMON, *overrides])
    state = run_campaign(cfg)
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "done"]
    from engine.tracking import Tracker, default_artifact_root, default_uri

    tracker = Tracker(default_uri(str(root)), cfg.tracking.experiment, default_artifact_root(str(root)))
    assert [k.round_index for k in tracker.children(state["mlflow_run_id"])] == [0, 1]
    return cfg, state, CampaignLayout(str(root), cfg.campaign.name)


def _scores(directory: Path) -> Any:
    parts = sorted(directory.glob("part-*.parquet"))
    return pq.ParquetDataset([str(p) for p in parts]).read().to_pandas().sort_values("key").reset_index(drop=True)


def _evaluable_val(manifest: Path) -> int:
    """Rows the evaluate stage scores on val: labelled val rows without a twin in the training splits."""
    m = pq.read_table(manifest).to_pandas()
    val = m[(m.split == "val") & (m.label >= 0)]
    return int((~val.leak_with.fillna("").str.contains("train|unlabelled")).sum())


def _passing(scores: Any, lay: CampaignLayout) -> np.ndarray:
    thr = np.array([np.inf if t is None else t for t in fs.read_json(lay.round(1).thresholds)["thresholds"]])
    return scores.conf.to_numpy() >= thr[scores.pred.to_numpy()]


@pytest.mark.timeout(1800)  # two sources to ingest and a Ray Data shuffle: slower than the others on a busy machine
def test_cfc_sp_cascade_with_smoothing(ray_local, fer2013_dir, tmp_path):
    from engine.models.cascade import CascadeHead
    from engine.models.checkpoint import load_checkpoint
    from engine.smoothing import smooth_probs

    videos = write_affwild2_videos(tmp_path / "affwild2", videos=3, frames=10, first=200)
    root = tmp_path / "runs"
    _, _, lay = _run(
        "cfc_sp",
        root,
        [
            f"sources.fer2013.path={fer2013_dir}",
            "sources.fer2013.limit=80",
            f"sources.affwild2.path={videos}",
            "campaign.labelled_fraction=0.4",
            "threshold.policy=fixed",
            "threshold.tau=0.2",
        ],
    )
    score_dir = root / "campaigns/cfc_sp/rounds/r001/score"
    raw, final = _scores(score_dir / "raw"), _scores(score_dir)
    assert list(raw.key) == list(final.key)
    manifest = pq.read_table(root / "sources/affwild2/manifest").to_pandas().set_index("key")
    is_video = final.key.str.startswith("affwild2_").to_numpy()
    assert is_video.sum() == 30
    # image rows pass through unchanged; each video equals the pure-numpy smoothing of its raw rows
    assert np.array_equal(np.stack(final.probs[~is_video]), np.stack(raw.probs[~is_video]))
    for group in ("vid0", "vid1", "vid2"):
        keys = [k for k in final.key[is_video] if manifest.loc[k, "group"] == group]
        rows = final.key.isin(keys).to_numpy()
        expect = smooth_probs(np.stack(raw.probs[rows]), manifest.loc[list(final.key[rows]), "frame"], window=5)
        assert np.array_equal(np.stack(final.probs[rows]), expect)
    probs = np.stack(final.probs)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(final.pred.to_numpy(), probs.argmax(1))
    assert fs.read_json(str(score_dir / "stats.json"))["n"] == len(final)
    student = load_checkpoint(lay.round(1).student)
    assert isinstance(student.model.head, CascadeHead) and student.label_space.name == "abaw8"
    assert fs.read_json(lay.round(1).metrics)["val"]["n"] == _evaluable_val(root / "sources/fer2013/manifest") > 0


def test_esr_branches_disagreement_gate(ray_local, fer2013_dir, tmp_path):
    from engine.disagreement import branch_disagreement

    root = tmp_path / "runs"
    _, _, lay = _run(
        "esr",
        root,
        [
            f"sources.fer2013.path={fer2013_dir}",
            "sources.fer2013.limit=80",
            "campaign.labelled_fraction=0.4",
            "threshold.policy=fixed",
            "threshold.tau=0.2",
            "select.max_disagreement=0.6",
        ],
    )
    scores = _scores(root / "campaigns/esr/rounds/r001/score")
    branch = np.stack([np.stack(b) for b in scores.branch_probs])
    assert branch.shape == (len(scores), 4, 7)
    assert np.allclose(np.stack(scores.probs), branch.mean(1), atol=1e-5)  # teacher probs = branch mean
    assert np.array_equal(scores.disagreement.to_numpy(), branch_disagreement(branch, "vote_entropy"))
    passing = _passing(scores, lay)
    gated = passing & (scores.disagreement.to_numpy() > 0.6)
    selection = pq.read_table(lay.round(1).selection).to_pandas()
    assert sorted(selection.key) == sorted(scores.key[passing & ~gated])
    assert fs.read_json(lay.round(1).quality)["excluded"]["disagreement"] == int(gated.sum())


def test_va_head_ccc_and_gating(ray_local, fer2013_dir, tmp_path):
    from engine.va_gate import va_contradicts

    data = write_affectnet_va(tmp_path / "affectnet_va", n_train=100, n_val=30)
    root = tmp_path / "runs"
    _, _, lay = _run("va", root, [f"sources.affectnet.path={data}", "threshold.tau=0.2"])
    scores = _scores(root / "campaigns/va/rounds/r001/score")
    valence = scores.valence.to_numpy()
    assert np.all(np.abs(valence) <= 1) and np.all(np.abs(scores.arousal.to_numpy()) <= 1)
    lo = np.full(7, -np.inf)
    hi = np.full(7, np.inf)
    lo[4] = 0.0  # Happiness
    hi[[1, 2, 3, 5]] = 0.0  # Anger, Disgust, Fear, Sadness
    passing = _passing(scores, lay)
    contra = passing & va_contradicts(scores.pred.to_numpy(), valence, lo, hi)
    selection = pq.read_table(lay.round(1).selection).to_pandas()
    assert sorted(selection.key) == sorted(scores.key[passing & ~contra])
    assert fs.read_json(lay.round(1).quality)["excluded"]["va_contradiction"] == int(contra.sum())
    metrics = fs.read_json(lay.round(1).metrics)["val"]
    assert metrics["va_n"] == metrics["n"] == 30
    assert -1 <= metrics["ccc_valence"] <= 1 and -1 <= metrics["ccc_arousal"] <= 1
    r1 = fs.read_json(lay.round(1).state)
    assert r1["metrics"]["val/ccc_mean"] == pytest.approx((metrics["ccc_valence"] + metrics["ccc_arousal"]) / 2)


def test_abaw_sequence_ensemble(ray_local, tmp_path):
    """CNN + GRU + transformer over windows of Aff-Wild2-format videos of real faces: the distributed scoring equals
    a direct computation per video, the teacher is the mean of its members, evaluation reports every member."""
    from engine.models.checkpoint import load_checkpoint
    from engine.models.sequence import member_probs

    data = write_affwild2_segments(tmp_path / "affwild2", train_videos=6, val_videos=3, frames=16, segment=8)
    root = tmp_path / "runs"
    _, _, lay = _run(
        "abaw_ensemble",
        root,
        [
            f"sources.affwild2.path={data}",
            "ingest.samples_per_shard=40",  # videos span shards
            "model.temporal_window=4",
            "train.temporal_epochs=3",
            "threshold.policy=fixed",
            "threshold.tau=0.2",
        ],
    )
    r0 = fs.read_json(lay.round(0).state)
    assert {"temporal_gru_train_acc", "temporal_transformer_train_acc"} <= set(r0["stages"]["train"]["counts"])
    teacher = load_checkpoint(lay.round(0).student)
    assert (
        teacher.extra["temporal_fit"]["temporal_gru_train_acc"]
        == r0["stages"]["train"]["counts"]["temporal_gru_train_acc"]
    )
    score_dir = root / "campaigns/abaw_ensemble/rounds/r001/score"
    raw, final = _scores(score_dir / "raw"), _scores(score_dir)
    assert list(raw.key) == list(final.key) and len(final) > 0
    branch = np.stack([np.stack(b) for b in final.branch_probs])
    assert branch.shape == (len(final), 3, 8)
    assert np.allclose(np.stack(final.probs), branch.mean(1), atol=1e-6)  # equal weights: the members' mean
    assert np.array_equal(branch[:, 0], np.stack(raw.probs))  # member 0 is the per-frame CNN
    assert "features" not in final.columns and np.stack(raw.features).shape[0] == len(raw)
    manifest = pq.read_table(root / "sources/affwild2/manifest").to_pandas().set_index("key")
    video = manifest.loc[list(final.key), "group"].to_numpy()
    assert (final.groupby(video).shard.nunique() > 1).any()  # some video's pool rows lie in two shards
    for group in sorted(set(video)):
        rows = np.flatnonzero(video == group)
        rows = rows[np.argsort(manifest.loc[list(final.key.iloc[rows]), "frame"].to_numpy())]
        feats = np.stack(raw.features.iloc[rows]).astype(np.float32)
        for m, name in enumerate(["gru", "transformer"], start=1):
            want = member_probs(teacher.model.temporal[name], feats, 4)
            np.testing.assert_allclose(branch[rows, m], want, atol=1e-5, err_msg=f"{group} {name}")
    metrics = fs.read_json(lay.round(1).metrics)["val"]
    assert set(metrics["members"]) == {"cnn", "gru", "transformer"}
    assert all(v["n"] == metrics["n"] == 48 for v in metrics["members"].values())
    assert metrics["abaw2021"] == pytest.approx(0.67 * metrics["macro_f1"] + 0.33 * metrics["accuracy"])
