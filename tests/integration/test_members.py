"""An ensemble round-0 teacher (``campaign.teacher_members``) on a tiny real campaign: round 0 trains two members
(seeds ``train.seed`` and ``train.seed + 1``), is evaluated as their ensemble, and round 1 scores the pool with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.campaign import run_campaign
from engine.io import fs
from engine.layout import SUCCESS, CampaignLayout, join


def test_an_ensemble_round_0_teacher_scores_the_mean_of_its_members(tiny_campaign, tmp_path, monkeypatch):
    from engine.config import load_config
    from engine.imaging import decode_pixels
    from engine.io.tars import read_images
    from engine.layout import shard_tar
    from engine.metrics import classification_metrics
    from engine.models.teacher import CheckpointTeacher
    from engine.partition_rule import load_rule
    from engine.products.status import storage_status
    from engine.stages.evaluate import predict_split
    from tests.integration.conftest import REPO, TINY_CAMPAIGN_SETS
    from tests.integration.processes import tiny_sets

    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    sets = [*tiny_sets(".", tiny_campaign.cfg.sources["fer2013"].path, epochs=1), *TINY_CAMPAIGN_SETS]
    sets += ["campaign.name=ens", "campaign.teacher_members=2", "campaign.rounds=1", "curation.label_issues=false"]
    sets += ["train.soft_labels=false", "train.in_process=true", "tracking.log_models=false", "review.size=4"]
    cfg = load_config([REPO / "conf/demo.yaml"], sets)
    state = run_campaign(cfg)  # round 1 stops at its review batch, after scoring the pool with the ensemble
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "waiting_review"]

    lay = CampaignLayout(str(root), "ens")
    r0 = fs.read_json(lay.round(0).state)
    paths = ["campaigns/ens/rounds/r000/train/student.pt", "campaigns/ens/rounds/r000/members/m1/student.pt"]
    assert state["teacher"]["paths"] == r0["student"]["members"] == paths
    assert state["teacher"]["fingerprint"] == r0["student"]["fingerprint"]
    member = fs.read_json(join(lay.round(0).member_dir(1), SUCCESS))
    assert member["inputs"]["train"]["seed"] == cfg.train.seed + 1
    assert r0["stages"]["members"]["counts"] == {"members": 2, "trained": 1, "copied": 0}
    status = next(c for c in storage_status(str(root)).campaigns if c.name == "ens")
    assert status.rounds[0].stages == {"train": "committed", "members": "committed", "evaluate": "committed"}

    # round 0 is evaluated as the ensemble: its probabilities are the mean of the members' (each predicted alone
    # by the same path), and each member's own metrics stand beside the ensemble's
    rule, names = (
        load_rule(str(root), "ens"),
        ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"],
    )
    metrics = fs.read_json(lay.round(0).metrics)
    e = cfg.eval  # the evaluate stage's batch size and flip TTA
    alone = [predict_split(str(root), rule, str(root / p), "val", e.batch_size, e.tta_flip) for p in paths]
    assert not np.array_equal(alone[0].probs, alone[1].probs)  # two seeds, two nets
    mean = ((alone[0].probs.astype(np.float64) + alone[1].probs.astype(np.float64)) / 2).astype(np.float32)
    ensemble = classification_metrics(alone[0].y, mean.argmax(1), names)
    assert metrics["val"]["macro_f1"] == ensemble["macro_f1"] == r0["metrics"]["val/macro_f1"]
    assert metrics["ensemble"] == paths
    for j, pred in enumerate(alone):
        own = classification_metrics(pred.y, pred.probs.argmax(1), names)
        assert metrics["val"]["members"][f"m{j}"]["macro_f1"] == own["macro_f1"]

    # round 1's teacher is the ensemble: each pool row's probabilities are exactly the mean of its members'
    parts = sorted(str(p) for p in Path(lay.round(1).score_dir).glob("part-*.parquet"))
    scores = pq.ParquetDataset(parts).read().to_pandas()
    branches = np.stack(scores.branch_probs.map(lambda b: np.stack(list(b))).to_list()).astype(np.float32)
    probs = np.stack(scores.probs.map(np.asarray).to_list()).astype(np.float32)
    assert branches.shape == (len(scores), 2, len(names))
    assert np.array_equal(probs, ((branches[:, 0].astype(np.float64) + branches[:, 1]) / 2).astype(np.float32))
    images = {}
    for shard, keys in scores.groupby("shard").key:
        blobs = read_images(shard_tar(str(root), shard), set(keys))
        images.update({k: decode_pixels(blobs[k]) for k in keys})
    for j, p in enumerate(paths):
        own = CheckpointTeacher(str(root / p)).predict([images[k] for k in scores.key]).probs
        np.testing.assert_allclose(branches[:, j], own, atol=1e-5)  # member j alone (other batches: last bits)
    assert (scores.disagreement > 0).any()


def test_a_distilling_student_learns_the_teacher_on_every_pool_row(tiny_campaign, tmp_path, monkeypatch):
    """``student.train.distill``: round 1's student draws mu x batch_size pool rows a step from every row the round
    scored (the teacher's probabilities at T as targets), beside labelled ∪ selected rows with their hard labels."""
    import json

    from engine.config import load_config
    from engine.samples import sharpen
    from tests.integration.conftest import REPO

    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    extra = ["campaign.rounds=1", "curation.label_issues=false", "train.soft_labels=false", "train.in_process=true"]
    extra += ["tracking.log_models=false", "student.train.distill=true", "student.train.distill_temperature=2.0"]
    cfg = load_config([REPO / "conf/demo.yaml"], tiny_campaign.given_teacher_sets("kd", extra))
    state = run_campaign(cfg)
    assert state["rounds"]["1"]["status"] == "done"
    r1 = CampaignLayout(str(root), "kd").round(1)
    parts = sorted(str(p) for p in Path(r1.score_dir).glob("part-*.parquet"))
    scores = pq.ParquetDataset(parts).read(columns=["key", "shard", "pred", "probs"]).to_pandas()
    pool = pq.read_table(join(r1.train_dir, "distill_pool.parquet")).to_pandas()
    assert (
        pool.key.tolist() == sorted(scores.key)
        and (pool.label.to_numpy() == scores.set_index("key").pred.loc[pool.key]).all()
    )
    history = json.loads(sorted(Path(r1.train_dir).rglob("history.json"))[-1].read_text())
    s = cfg.for_round(1).train
    for h in history:  # every step also learnt mu x batch_size distilled pool rows, all of them counted
        assert h["unlabelled_images"] == h["steps"] * s.mu * s.batch_size and h["mask_rate"] == 1.0
        assert h["loss_u"] > 0
    # the targets the worker read are the score parts' probabilities at T (engine.samples, one shard checked)
    from engine.samples import samples_dataset

    got = samples_dataset(
        str(root), join(r1.train_dir, "distill_pool.parquet"), score_dir=r1.score_dir, temperature=2.0
    )
    rows = {r["key"]: np.frombuffer(r["target"], "<f4") for r in got.take_all()}
    want = sharpen(np.stack(scores.probs.map(np.asarray).to_list()), 2.0)
    np.testing.assert_array_equal(np.stack([rows[k] for k in scores.key]), want)
    assert fs.read_json(join(r1.train_dir, SUCCESS))["inputs"]["train"]["distill"] is True
