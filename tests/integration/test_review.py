"""People in the loop on a tiny real campaign: round 1 stops with a review batch (a Label Studio project), people's
answers are imported, round 1 trains on them, round 2 asks about other faces and trains on both batches' answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from engine.campaign import run_campaign
from engine.io import fs
from engine.io.tars import read_images
from engine.layout import SUCCESS, CampaignLayout, join, shard_tar

B = 12


def people_answer(lay_round, manifest, answers_by_rank) -> list[dict]:
    """A Label Studio export of the round's tasks: face i answered ``answers_by_rank(i, true class name)``."""
    tasks = json.loads(Path(lay_round.review_dir, "tasks.json").read_text())
    out = []
    for i, t in enumerate(tasks):
        true = manifest.loc[t["data"]["key"], "label"]
        choice = answers_by_rank(i, NAMES[true])
        anns = (
            []
            if choice is None
            else [
                {
                    "id": i + 1,
                    "completed_by": 1,
                    "was_cancelled": False,
                    "created_at": "2026-12-07T10:00:00Z",
                    "lead_time": 1.0,
                    "result": [
                        {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
                    ],
                }
            ]
        )
        out.append({"id": 100 + i, "data": t["data"], "annotations": anns, "predictions": []})
    return out


NAMES = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]


def test_a_campaign_trains_on_reviewed_faces(tiny_campaign, tmp_path, monkeypatch):
    from engine.config import load_config
    from tests.integration.conftest import REPO

    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    sets = tiny_campaign.given_teacher_sets(
        "people",
        [
            "campaign.rounds=2",
            "curation.label_issues=false",
            "train.soft_labels=false",
            "train.in_process=true",
            "tracking.log_models=false",  # the students as MLflow models are tested in test_mlflow
            f"review.size={B}",
            "review.rule=margin",
        ],
    )
    cfg = load_config([REPO / "conf/demo.yaml"], sets)
    lay = CampaignLayout(str(root), "people")
    manifest = pq.read_table(root / "sources/fer2013/manifest").to_pandas().set_index("key")

    # Round 1 stops before its selection with a batch for people.
    state = run_campaign(cfg)
    labelled0 = pq.read_table(lay.labelled).to_pandas()
    assert state["rounds"]["1"]["status"] == "waiting_review"
    assert state["waiting_review"] == {"round": 1, "dir": "campaigns/people/rounds/r001/review"}
    r1 = lay.round(1)
    assert not fs.exists(r1.select_dir)
    batch = pq.read_table(r1.review_batch).to_pandas()
    scores = pq.ParquetDataset(sorted(str(p) for p in Path(r1.score_dir).glob("part-*.parquet"))).read().to_pandas()
    # margin with a per-class quota: each predicted class's smallest margins, shares as equal as the pool allows
    per_class = scores.groupby("pred").size()
    assert len(batch) == B and batch.key.is_unique
    assert sorted(batch.teacher_label.unique()) == sorted(per_class.index)
    for c, got in batch.groupby("teacher_label"):
        cls = scores[scores.pred == c].sort_values(["margin", "key"])
        assert sorted(got.key) == sorted(cls.key[: len(got)]), f"class {c}: not its smallest margins"
    assert (batch.score.to_numpy() == scores.set_index("key").margin.loc[batch.key].to_numpy()).all()
    tasks = json.loads(Path(r1.review_dir, "tasks.json").read_text())
    assert [t["data"]["key"] for t in tasks] == batch.key.tolist()
    first = batch.iloc[0]
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == [NAMES[first.teacher_label]]
    on_disk = Path(r1.review_dir, first.image).read_bytes()
    assert on_disk == read_images(shard_tar(str(root), first.shard), {first.key})[first.key]
    assert len(Path(r1.review_dir, "batch.csv").read_text().splitlines()) == B + 1
    from engine.products.status import format_status, storage_status

    status = format_status(storage_status(str(root)))
    bid = fs.read_json(join(r1.review_dir, SUCCESS))["extra"]["batch"]
    assert f"review r001: batch {bid}, {B} faces by margin: WAITING FOR PEOPLE in {r1.review_dir}" in status

    # People: 8 true labels, 2 "not a face", 1 "unsure", 1 unanswered; imported through the CLI.
    def answer(i: int, true: str) -> str | None:
        return true if i < 8 else ("not a face" if i < 10 else ("unsure" if i == 10 else None))

    export = tmp_path / "export.json"
    export.write_text(json.dumps(people_answer(r1, manifest, answer)))
    args = [sys.executable, "-m", "engine.cli", "review", "import", str(export)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(
        [*args, "--config", str(REPO / "conf/demo.yaml")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "answers of 12 faces imported" in out.stdout and "8 labelled" in out.stdout
    again = subprocess.run(
        [*args, "--config", str(REPO / "conf/demo.yaml")], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already imported" in again.stderr

    # Round 1 goes on: its labelled set gains the 8 faces, select never picks the 10 answered ones, train sees them.
    state = run_campaign(cfg)
    assert state["rounds"]["1"]["status"] == "done"
    assert state["rounds"]["2"]["status"] == "waiting_review"
    lab1 = pq.read_table(r1.reviewed_labelled).to_pandas()
    added = batch.key[:8].tolist()
    assert len(lab1) == len(labelled0) + 8
    assert set(lab1.key) == set(labelled0.key) | set(added)
    assert (lab1.set_index("key").label.loc[added] == manifest.label.loc[added]).all()
    assert set(lab1[lab1.origin == "reviewed"].key) == set(added)
    assert (lab1[lab1.origin == "reviewed"].review_round == 1).all()
    assert sorted(pq.read_table(r1.reviewed_removed).to_pandas().key) == sorted(batch.key[8:10])
    selection = pq.read_table(r1.selection).to_pandas()
    assert not set(selection.key) & set(batch.key[:10])
    doc1 = fs.read_json(r1.state)
    assert doc1["stages"]["reviewed"]["counts"] == {
        "labelled": len(labelled0) + 8,
        "added": 8,
        "relabelled": 0,
        "confirmed": 0,
        "removed": 2,
    }
    assert doc1["stages"]["train"]["counts"]["labelled_rows"] == len(labelled0) + 8
    train_marker = fs.read_json(join(r1.train_dir, SUCCESS))
    assert train_marker["inputs"]["upstream"]["reviewed"] == doc1["stages"]["reviewed"]["fingerprint"]
    agree = int(sum(manifest.label.loc[added].to_numpy() == batch.teacher_label[:8].to_numpy()))
    assert doc1["review"]["answers"]["labelled"] == 8 and doc1["review"]["answers"]["agree_with_teacher"] == agree
    report = Path(r1.report).read_text()
    assert f"Batch <code>{bid}</code>: {B} faces chosen by <code>margin</code>" in report
    assert "8 of 12 faces labelled" in report
    status = format_status(storage_status(str(root)))
    assert f"review r001: batch {bid}, {B} faces by margin: answered, 8 labelled (0 labels changed)" in status

    from mlflow import MlflowClient

    from engine.tracking import default_uri

    client = MlflowClient(tracking_uri=default_uri(str(root)))
    run = client.get_run(state["rounds"]["1"]["mlflow_run_id"])
    assert run.data.metrics["review/labelled"] == 8 and run.data.metrics["review/faces"] == B
    assert run.data.params["review.rule"] == "margin"
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs[f"people/review/{bid}"] == bid
    assert inputs[f"people/answers/{bid}"] == fs.read_json(join(r1.answers_dir, SUCCESS))["fingerprint"][:36]

    # Round 2 asks about other faces (never twice), then trains on both batches' answers.
    r2 = lay.round(2)
    batch2 = pq.read_table(r2.review_batch).to_pandas()
    assert len(batch2) == B and not set(batch2.key) & set(batch.key)
    export2 = tmp_path / "export2.json"
    export2.write_text(json.dumps(people_answer(r2, manifest, lambda i, true: true)))
    from engine.review.answers import import_answers

    assert import_answers(cfg, str(export2))["labelled"] == B
    state = run_campaign(cfg)
    assert state["rounds"]["2"]["status"] == "done" and "waiting_review" not in state
    lab2 = pq.read_table(r2.reviewed_labelled).to_pandas()
    assert set(lab2.key) == set(labelled0.key) | set(added) | set(batch2.key)
    assert fs.read_json(r2.state)["stages"]["train"]["counts"]["labelled_rows"] == len(labelled0) + 8 + B


def test_people_recheck_flagged_labels_and_change_them(tiny_campaign, tmp_path, monkeypatch):
    """review.rule=label_issues on a copy of the shared campaign: round 2 asks about the labelled faces round 1's
    curation flagged, lowest label quality first; people's answers change two labels (the old ones kept) and take one
    face out, and round 2 trains on that."""
    import shutil

    from engine.config import load_config
    from tests.integration.conftest import REPO, TINY_CAMPAIGN_SETS
    from tests.integration.processes import tiny_sets

    root = tmp_path / "store"
    shutil.copytree(tiny_campaign.root, root)
    monkeypatch.chdir(root)
    sets = [*tiny_sets(".", tiny_campaign.cfg.sources["fer2013"].path, epochs=2), *TINY_CAMPAIGN_SETS]
    sets += ["campaign.rounds=2", "review.size=4", "review.rule=label_issues", "review.per_class_quota=false"]
    sets += ["train.in_process=true", "tracking.log_models=false"]
    cfg = load_config([REPO / "conf/demo.yaml"], sets)
    state = run_campaign(cfg)
    assert state["rounds"]["2"]["status"] == "waiting_review"
    lay = CampaignLayout(str(root), "demo")
    r2 = lay.round(2)
    flagged = pq.read_table(join(lay.round(1).curation_dir, "label_issues.parquet")).to_pandas()
    manifest = pq.read_table(root / "sources/fer2013/manifest", columns=["key", "leak_with"]).to_pandas()
    twins = set(manifest.key[manifest.leak_with.notna()])
    worst = flagged[~flagged.key.isin(twins)].sort_values(["quality", "key"]).head(4)
    batch = pq.read_table(r2.review_batch).to_pandas()
    assert batch.key.tolist() == worst.key.tolist()  # lowest label quality first, no face with a val/test twin
    flags = flagged.set_index("key")
    assert (batch.given_label.to_numpy() == flags.given_label.loc[batch.key].to_numpy()).all()
    assert (batch.teacher_label.to_numpy() == flags.suggested_label.loc[batch.key].to_numpy()).all()
    assert (batch.score.to_numpy() == flags.quality.loc[batch.key].astype(float).to_numpy()).all()

    # people: the first two get the suggested label, the third is not a face, the fourth keeps its label
    tasks = json.loads(Path(r2.review_dir, "tasks.json").read_text())
    answers = [NAMES[batch.teacher_label[0]], NAMES[batch.teacher_label[1]], "not a face", NAMES[batch.given_label[3]]]
    export = [
        {
            "id": i,
            "data": t["data"],
            "annotations": [
                {
                    "completed_by": 3,
                    "was_cancelled": False,
                    "result": [
                        {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [a]}}
                    ],
                }
            ],
        }
        for i, (t, a) in enumerate(zip(tasks, answers, strict=True))
    ]
    (tmp_path / "e.json").write_text(json.dumps(export))
    from engine.review.answers import import_answers

    counts = import_answers(cfg, str(tmp_path / "e.json"))
    changed = int((batch.teacher_label[:2] != batch.given_label[:2]).sum())
    assert counts["relabelled"] == changed
    state = run_campaign(cfg)
    assert state["rounds"]["2"]["status"] == "done"
    lab = pq.read_table(r2.reviewed_labelled).to_pandas().set_index("key")
    labelled0 = pq.read_table(lay.labelled).to_pandas().set_index("key")
    assert len(lab) == len(labelled0) - 1 and batch.key[2] not in lab.index
    for i in (0, 1):
        k = batch.key[i]
        assert lab.label[k] == batch.teacher_label[i]
        assert lab.old_label[k] == (labelled0.label[k] if batch.teacher_label[i] != labelled0.label[k] else -1)
    assert lab.label[batch.key[3]] == labelled0.label[batch.key[3]] and lab.old_label[batch.key[3]] == -1
    doc = fs.read_json(r2.state)
    assert doc["stages"]["reviewed"]["counts"]["removed"] == 1
    assert doc["stages"]["reviewed"]["counts"]["relabelled"] == changed
    assert doc["stages"]["train"]["counts"]["labelled_rows"] == len(labelled0) - 1
    if changed:
        assert "Labels people changed (old → new)" in Path(r2.report).read_text()


def test_flip_views_make_a_single_teachers_disagreement_a_review_rule(tiny_campaign, tmp_path, monkeypatch):
    """``score.tta_flip`` + ``score.flip_views`` on the single round-0 checkpoint: the score parts keep the two views
    as branches (their mean is the probabilities) and a ``disagreement`` column, and ``review.rule=disagreement``
    asks, per predicted class, about the faces whose mirror changes the teacher's mind most."""
    import numpy as np

    from engine.config import load_config
    from tests.integration.conftest import REPO

    root = tiny_campaign.copy_sources(tmp_path / "store")
    monkeypatch.chdir(root)
    extra = ["campaign.rounds=1", "curation.label_issues=false", "score.tta_flip=true", "score.flip_views=true"]
    extra += [f"review.size={B}", "review.rule=disagreement", "tracking.log_models=false"]
    cfg = load_config([REPO / "conf/demo.yaml"], tiny_campaign.given_teacher_sets("views", extra))
    state = run_campaign(cfg)
    assert state["rounds"]["1"]["status"] == "waiting_review"
    r1 = CampaignLayout(str(root), "views").round(1)
    parts = sorted(str(p) for p in Path(r1.score_dir).glob("part-*.parquet"))
    scores = pq.ParquetDataset(parts).read().to_pandas()
    views = np.stack(scores.branch_probs.map(lambda b: np.stack(list(b))).to_list())
    probs = np.stack(scores.probs.map(np.asarray).to_list())
    assert views.shape == (len(scores), 2, len(NAMES))
    np.testing.assert_allclose(views.mean(axis=1), probs, atol=1e-6)
    assert (scores.disagreement > 0).any() and (scores.disagreement == 0).any()  # some faces flip their vote
    batch = pq.read_table(r1.review_batch).to_pandas()
    assert len(batch) == B and (batch.rule == "disagreement").all()
    for c, got in batch.groupby("teacher_label"):
        cls = scores[scores.pred == c].sort_values(["disagreement", "key"], ascending=[False, True])
        assert sorted(got.key) == sorted(cls.key[: len(got)]), f"class {c}: not its highest disagreements"
    assert (batch.score.to_numpy() == scores.set_index("key").disagreement.loc[batch.key].to_numpy()).all()
