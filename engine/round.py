"""One round: its stages (score → threshold → [review → reviewed] → select → train → evaluate → curation), each
skipped when committed, then its MLflow record (engine.tracking.rounds), ``report.html`` and ``round.json`` last. A
round whose review batch waits for people stops before its selection (:class:`engine.errors.ReviewWaiting`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.errors import ReviewWaiting
from engine.io import fs
from engine.layout import SUCCESS, CampaignLayout, join, root_path, round_name, round_stage_names, stored_path
from engine.products.report import finish_round
from engine.review.answers import waiting
from engine.stages.base import Stage, StageContext, StageResult

if TYPE_CHECKING:
    from engine.tracking import Tracker

log = logging.getLogger(__name__)


def round_stages(cfg: Config, index: int) -> list[type[Stage]]:
    """The stages of round ``index``, in order (engine.layout.round_stage_names says which)."""
    from engine.review.answers import answers_committed
    from engine.stages.curation import LabelIssuesStage
    from engine.stages.evaluate import EvaluateStage
    from engine.stages.members import MembersStage
    from engine.stages.review import ReviewedStage, ReviewStage
    from engine.stages.score import ScoreStage
    from engine.stages.select import SelectStage
    from engine.stages.threshold import ThresholdStage
    from engine.stages.train import TrainStage

    every = (ScoreStage, ThresholdStage, ReviewStage, ReviewedStage, SelectStage, TrainStage, EvaluateStage)
    classes: dict[str, type[Stage]] = {s.name: s for s in (*every, MembersStage, LabelIssuesStage)}
    names = round_stage_names(
        index,
        teacher_checkpoint=bool(cfg.campaign.teacher_checkpoint),
        label_issues=cfg.curation.label_issues,
        review=cfg.review.size > 0,
        reviewed=bool(answers_committed(CampaignLayout(cfg.storage.root, cfg.campaign.name), index)),
        members=cfg.campaign.teacher_members > 1,
    )
    return [classes[n] for n in names]


def run_round(ctx: StageContext, *, tracker: Tracker | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) the round ``ctx.round`` stage by stage and return its ``round.json`` document.

    ``ctx`` holds the committed partition upstream, the round's teacher and its MLflow run (``ctx.tracking``).
    """
    cfg, index, lay = ctx.cfg, ctx.round, ctx.round_layout
    assert index is not None
    done = fs.read_json_or_none(lay.state)
    if done is not None:
        log.info("round %s: already complete (round.json present)", round_name(index))
        return dict(done)
    results: dict[str, StageResult] = {}
    for stage in round_stages(cfg, index):
        if stage.name in ("reviewed", "select") and waiting(lay):
            faces = int(fs.read_json(join(lay.review_dir, SUCCESS))["counts"]["faces"])
            raise ReviewWaiting(index, lay.review_dir, faces)
        results[stage.name] = stage(ctx).execute()
        ctx = ctx.with_result(stage.name, results[stage.name])
    doc = round_document(ctx, results)
    run_id = ctx.tracking["run_id"] if ctx.tracking else None
    if tracker is not None and run_id:
        _track(tracker, run_id, ctx, results, doc)
    finish_round(cfg, lay, doc, tracker=tracker, run_id=run_id)  # report.html, before round.json
    fs.write_json(lay.state, doc)
    return doc


def round_document(ctx: StageContext, results: dict[str, StageResult]) -> dict[str, Any]:
    """``round.json``: teacher, student, the stages' results and the evaluation metrics, from committed files."""
    cfg, index, lay, teacher = ctx.cfg, ctx.round, ctx.round_layout, ctx.teacher
    metrics = fs.read_json(lay.metrics)
    evaluated = fs.read_json(join(lay.eval_dir, SUCCESS))["inputs"]["checkpoint"]
    student = lay.student if "train" in results else (teacher.paths[0] if teacher else lay.student)
    doc: dict[str, Any] = {
        "round": index,
        "campaign": cfg.campaign.name,
        "teacher": {
            "paths": [stored_path(ctx.root, p) for p in teacher.paths],
            "fingerprint": teacher.fingerprint,
            "round": teacher.round,  # -1: a checkpoint from outside the campaign (campaign.teacher_checkpoint)
        }
        if teacher
        else None,
        "student": {"path": stored_path(ctx.root, student), "fingerprint": evaluated},  # round 0 with members: the
        # ensemble's fingerprint, its members' paths in "members" (the teacher the campaign promotes)
        "policy": cfg.threshold.policy if index else None,
        "stages": {
            k: {"fingerprint": r.fingerprint, "counts": r.counts, "skipped": r.skipped, "seconds": r.seconds}
            for k, r in results.items()
            if k != "curation"
        },
        "metrics": {
            f"{s}/{k}": metrics[s][k]
            for s in cfg.eval.splits
            if s in metrics
            for k in ("macro_f1", "accuracy", "abaw2021", "n", "ccc_valence", "ccc_arousal", "ccc_mean")
            if metrics[s].get(k) is not None
        },
        "mlflow_run_id": ctx.tracking["run_id"] if ctx.tracking else None,
    }
    if "members" in results:
        doc["student"]["members"] = list(results["members"].extra["checkpoints"])
    if index:
        doc["thresholds"] = fs.read_json(lay.thresholds)["thresholds_by_class"]
        doc["quality"] = fs.read_json(lay.quality)
    review = fs.read_json_or_none(join(lay.review_dir, SUCCESS))
    if review is not None:  # a batch people answered (a round never finishes while one waits)
        answers = fs.read_json(join(lay.answers_dir, SUCCESS))
        doc["review"] = {
            "batch": review["extra"]["batch"],
            "rule": review["extra"]["rule"],
            "faces": review["counts"]["faces"],
            "per_class": review["extra"]["per_class"],
            "answers": answers["counts"],
            "imported_at": answers["imported_at"],
        }
    return doc


def _track(
    tracker: Tracker, run_id: str, ctx: StageContext, results: dict[str, StageResult], doc: dict[str, Any]
) -> None:
    """The round in its MLflow run (engine.tracking.rounds): metrics and artifacts from committed files, the labelled
    set and the selection as inputs, the student as a registered model version (recorded in ``doc``)."""
    from engine.io.tars import read_images
    from engine.layout import shard_tar
    from engine.tracking.rounds import DatasetRef, log_round, log_student

    lay, name = ctx.round_layout, ctx.cfg.campaign.name
    datasets = [
        DatasetRef(ctx.campaign.labelled, f"{name}/labelled", ctx.upstream["partition"].fingerprint, "training")
    ]
    if "select" in results:
        datasets.append(DatasetRef(lay.selection, f"{name}/selection", results["select"].fingerprint, "pseudo_labels"))
    if "review" in doc:  # the faces people were asked about, and their answers
        answered = fs.read_json(join(lay.answers_dir, SUCCESS))["fingerprint"]
        batch = doc["review"]["batch"]
        datasets.append(DatasetRef(lay.review_batch, f"{name}/review/{batch}", batch, "review_batch"))
        datasets.append(DatasetRef(lay.answers, f"{name}/answers/{batch}", answered, "review_answers"))
    artifacts = [lay.thresholds, lay.quality, lay.metrics, lay.confusion_png("val"), lay.confusion_png("test")]
    log_round(tracker, run_id, doc, artifacts=artifacts, datasets=datasets)
    if ctx.cfg.tracking.log_models:
        first = fs.read_parquet(ctx.campaign.labelled, columns=["key", "shard"]).slice(0, 1).to_pylist()[0]
        example = read_images(shard_tar(ctx.root, first["shard"]), {first["key"]})[first["key"]]
        checkpoint = root_path(ctx.root, doc["student"]["path"])
        doc["mlflow_model"] = log_student(
            tracker, run_id, doc, checkpoint=checkpoint, example=example, model_name=name
        )
