"""The shared tiny campaign (round 0 + round 1 on real FER2013): exact counts across files, idempotent re-run."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.campaign import run_campaign
from engine.io import fs
from engine.layout import CampaignLayout
from engine.models.checkpoint import load_checkpoint
from engine.stages.select import conf_bin


def test_campaign_round_counts_match_files(tiny_campaign):
    tmp_path, state = tiny_campaign.root, tiny_campaign.state
    lay = CampaignLayout(str(tmp_path), "demo")
    r1 = fs.read_json(lay.round(1).state)
    assert r1["teacher"]["round"] == 0  # the teacher's round: whether it shares the student's architecture

    manifest = pq.read_table(tmp_path / "sources/fer2013/manifest").to_pandas()
    labelled = pq.read_table(lay.partition_dir + "/labelled.parquet").to_pandas()
    pool = manifest[
        manifest.split.isin(["train", "unlabelled"]) & manifest.leak_with.isna() & ~manifest.key.isin(labelled.key)
    ]
    assert r1["stages"]["score"]["counts"]["rows"] == len(pool)
    parts = sorted((tmp_path / "campaigns/demo/rounds/r001/score").glob("part-*.parquet"))
    scores = pq.ParquetDataset([str(p) for p in parts]).read(columns=["key", "conf", "pred"]).to_pandas()
    assert sorted(scores.key) == sorted(pool.key)
    # tau 0 passes every row; the cap keeps each class's 10 most confident (the boundary bin split by the stage).
    selection = pq.read_table(lay.round(1).selection).to_pandas()
    assert r1["stages"]["select"]["counts"]["selected"] == len(selection)
    assert set(selection.key) <= set(scores.key)
    picked = scores.key.isin(selection.key).to_numpy()
    bins = conf_bin(scores.conf.to_numpy())
    for c in range(7):
        in_c = scores.pred.to_numpy() == c
        assert int((picked & in_c).sum()) == min(10, int(in_c.sum())), f"class {c}"
        if (picked & in_c).any() and (~picked & in_c).any():
            assert bins[picked & in_c].min() >= bins[~picked & in_c].max(), f"class {c}: a less confident row kept"
    assert (selection.set_index("key").label == scores.set_index("key").pred.loc[selection.key]).all()
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
        # student.model (conftest): round 1 trains small_cnn, not warm-started from round 0's tiny_cnn
        student = load_checkpoint(str(tmp_path / doc["student"]["path"]))
        assert (student.model_cfg.name, train["warm_started"]) == (("tiny_cnn", "small_cnn")[r], 0)
        assert train["best_val_macro_f1"] == max(val_f1) == pytest.approx(doc["metrics"]["val/macro_f1"], abs=1e-12)

    from engine.tracking import Tracker, default_artifact_root, default_uri

    tracker = Tracker(default_uri(str(tmp_path)), "fer-pseudolabel", default_artifact_root(str(tmp_path)))
    kids = tracker.children(state["mlflow_run_id"])
    assert [k.round_index for k in kids] == [0, 1]


def test_round_one_learns_the_teachers_sharpened_probabilities(tiny_campaign):
    """train.soft_labels (conftest): every selected row reaches the worker with its soft label, every epoch, and that
    label is its score part's probabilities sharpened with train.soft_temperature."""
    from engine.samples import samples_dataset, sharpen

    root = str(tiny_campaign.root)
    lay = CampaignLayout(root, "demo")
    r1 = lay.round(1)
    selection = pq.read_table(r1.selection).to_pandas()
    counts = [fs.read_json(lay.round(r).state)["stages"]["train"]["counts"] for r in (0, 1)]
    assert counts[0]["soft_images"] == 0  # round 0 has no pseudo-labels
    assert counts[1]["soft_images"] == counts[1]["epochs"] * int(selection["repeat"].clip(lower=1).sum()) > 0

    parts = sorted(glob.glob(f"{r1.score_dir}/part-*.parquet"))
    scores = pq.ParquetDataset(parts).read(columns=["key", "probs"]).to_pandas().set_index("key")
    probs = np.stack(scores.loc[selection.key, "probs"].to_numpy()).astype(np.float64)
    want = dict(zip(selection.key, sharpen(probs, 0.5), strict=True))
    rows = samples_dataset(root, r1.selection, score_dir=r1.score_dir, temperature=0.5).take_all()
    assert sorted({r["key"] for r in rows}) == sorted(selection.key)
    for r in rows:
        np.testing.assert_array_equal(np.frombuffer(r["target"], dtype="<f4"), want[r["key"]])


def test_campaign_rerun_changes_nothing(tiny_campaign, monkeypatch):
    tmp_path, state = tiny_campaign.root, tiny_campaign.state
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in p.name}
    monkeypatch.chdir(tmp_path)
    again = run_campaign(tiny_campaign.cfg)
    assert again["rounds"] == state["rounds"]
    changed = [
        p
        for p, t in mtimes.items()
        if p.exists()
        and p.stat().st_mtime_ns != t
        and p.name != "campaign.json"
        and p.suffix not in (".db", ".lock")  # a writer lock names the latest run (engine.io.lock)
        and "mlartifacts" not in str(p)
        and "config.json" not in p.name
    ]
    assert changed == []


def test_every_stage_commits_the_outputs_it_declares(tiny_campaign):
    """Each stage of rounds 0 and 1 (and ingest, partition) declares its files; the shared campaign has them all."""
    import dataclasses
    import glob

    from engine.round import round_stages
    from engine.stages.base import StageContext, TeacherRef, committed
    from engine.stages.ingest import IngestStage
    from engine.stages.partition import PartitionStage

    root = str(tiny_campaign.root)
    cfg = dataclasses.replace(tiny_campaign.cfg, storage=dataclasses.replace(tiny_campaign.cfg.storage, root=root))
    lay = CampaignLayout(root, "demo")
    stages = [IngestStage(StageContext(cfg, source="fer2013")), PartitionStage(StageContext(cfg))]
    for r in (0, 1):
        teacher = fs.read_json(lay.round(r).state)["teacher"]
        ref = TeacherRef.from_record(root, teacher) if teacher else None
        stages += [stage(StageContext(cfg, round=r, teacher=ref)) for stage in round_stages(cfg, r)]
    assert [s.label for s in stages] == [
        "ingest fer2013", "partition demo", "train r000", "evaluate r000", "curation r000",
        "score r001", "threshold r001", "select r001", "train r001", "evaluate r001", "curation r001",
    ]  # fmt: skip
    owners: dict[str, str] = {}
    for stage in stages:
        assert committed(stage.out_dir) is not None, stage.label
        outputs = stage.outputs()
        assert outputs, f"{stage.label} declares no output"
        for path in outputs:
            assert glob.glob(path), f"{stage.label}: declared output {path} is missing"
            assert owners.setdefault(path, stage.label) == stage.label, f"{path} declared by two stages"


def test_precision_target_thresholds_come_from_the_teachers_val_predictions(tiny_campaign, tmp_path, monkeypatch):
    """threshold.policy=precision: round 1's thresholds are, per class, the lowest confidence at which the teacher's
    val predictions of that class reach the target precision (brute force over every candidate here), the number of
    val rows is recorded, and an ensemble-free campaign runs through select and train on them."""
    from engine.config import load_config
    from engine.imaging import decode_pixels
    from engine.models.teacher import load_teacher
    from engine.partition_rule import PartitionRule
    from engine.stages.evaluate import split_samples
    from tests.integration.conftest import REPO

    teacher = str(tiny_campaign.root / "campaigns/demo/rounds/r000/train/student.pt")
    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    sets = tiny_campaign.given_teacher_sets("precision", [])
    sets += [
        "campaign.rounds=1",
        "threshold.policy=precision",
        # the tiny teacher is barely better than chance: a low target, so that classes it predicts get their
        # lowest confidence (precision is met by the whole class, robust to near-ties) and the others tau
        "threshold.target_precision=0.05",
        "threshold.min_support=1",
        "threshold.tau=0.9",
        "threshold.tau_min=0.0",
        "train.soft_labels=false",
    ]
    cfg = load_config([REPO / "conf/demo.yaml"], sets)
    run_campaign(cfg)
    lay = CampaignLayout(str(root), "precision")
    doc = fs.read_json(lay.round(1).thresholds)

    rule = PartitionRule.from_json(fs.read_json(lay.rule))
    val = split_samples(str(root), rule, "val")
    model = load_teacher([teacher], tta_flip=cfg.score.tta_flip)
    probs = model.predict([decode_pixels(b) for b in val["image"].to_pylist()]).probs
    pred, conf, y = probs.argmax(1), probs.max(1).astype(np.float64), val["label"].to_numpy()
    expected = []
    for c in range(7):
        ok = [
            t
            for t in np.unique(conf[pred == c])
            if (conf[pred == c] >= t).sum() >= 1 and (y[(pred == c) & (conf >= t)] == c).mean() >= 0.05
        ]
        expected.append(max(0.0, min(ok)) if ok else 0.9)
    assert doc["reference"] == {"split": "val", "rows": len(y), "tta_flip": cfg.score.tta_flip}
    assert doc["thresholds"] == pytest.approx(expected, abs=1e-6)
    assert len(set(doc["thresholds"])) > 1, "the rule should tell the classes apart on this teacher"
    assert doc["rule"].startswith("precision: T(c) = max(tau_min 0.0")
    r1 = fs.read_json(lay.round(1).state)
    assert r1["quality"]["per_class"]["Happiness"]["threshold"] == pytest.approx(expected[4], abs=1e-6)


def test_a_twin_campaign_copies_its_students_instead_of_training_them(tiny_campaign, tmp_path, monkeypatch):
    """In a copy of the shared store, campaign ``twin`` has the shared campaign's config under another name (and no
    label-issue curation, which no student reads): its partition gives the same labelled faces, so round 0's train
    stage finds the same content key in ``index/students/`` and copies that student; round 1 scores with it,
    selects the same rows and copies round 1's student too. Both rounds' students and metrics equal the shared
    campaign's, and a changed training input (one more epoch) trains again."""
    import dataclasses
    import shutil

    root = tmp_path / "store"
    shutil.copytree(tiny_campaign.root, root, symlinks=True)
    monkeypatch.chdir(root)
    base = tiny_campaign.cfg
    cfg = dataclasses.replace(
        base,
        storage=dataclasses.replace(base.storage, root=str(root)),
        campaign=dataclasses.replace(base.campaign, name="twin"),
        curation=dataclasses.replace(base.curation, label_issues=False),
    )
    state = run_campaign(cfg)
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "done"]
    demo, twin = CampaignLayout(str(root), "demo"), CampaignLayout(str(root), "twin")
    for r in (0, 1):
        marker = fs.read_json(f"{twin.round(r).train_dir}/_SUCCESS.json")
        assert marker["extra"]["reused_from"] == f"campaigns/demo/rounds/r{r:03d}/train"
        assert (root / twin.round(r).student).read_bytes() == (root / demo.round(r).student).read_bytes()
        ours, theirs = (fs.read_json(lay.round(r).metrics) for lay in (twin, demo))
        assert {s: ours[s]["macro_f1"] for s in ("val", "test")} == {s: theirs[s]["macro_f1"] for s in ("val", "test")}
    assert not (root / twin.round(0).train_dir / "ray").exists()  # nothing trained

    longer = dataclasses.replace(cfg, campaign=dataclasses.replace(cfg.campaign, name="longer", rounds=0))
    longer = dataclasses.replace(longer, train=dataclasses.replace(cfg.train, epochs=cfg.train.epochs + 1))
    run_campaign(longer)
    marker = fs.read_json(f"{CampaignLayout(str(root), 'longer').round(0).train_dir}/_SUCCESS.json")
    assert "reused_from" not in marker["extra"] and marker["counts"]["epochs"] == cfg.train.epochs + 1
