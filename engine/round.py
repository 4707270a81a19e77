"""One round: the stages score → threshold → select → train → evaluate (→ curation), each skipped when committed,
then ``report.html`` and ``round.json`` last."""

from __future__ import annotations

import logging
from typing import Any

from engine.config import Config
from engine.io import fs
from engine.layout import SUCCESS, RoundLayout, join, root_path, round_name, round_stage_names, stored_path
from engine.products.report import finish_round
from engine.stages.base import Stage, StageContext, StageResult

log = logging.getLogger(__name__)


def round_stages(cfg: Config, index: int) -> list[type[Stage]]:
    """The stages of round ``index``, in order (engine.layout.round_stage_names says which)."""
    from engine.stages.curation import LabelIssuesStage
    from engine.stages.evaluate import EvaluateStage
    from engine.stages.score import ScoreStage
    from engine.stages.select import SelectStage
    from engine.stages.threshold import ThresholdStage
    from engine.stages.train import TrainStage

    classes: dict[str, type[Stage]] = {
        s.name: s for s in (ScoreStage, ThresholdStage, SelectStage, TrainStage, EvaluateStage, LabelIssuesStage)
    }
    names = round_stage_names(
        index, teacher_checkpoint=bool(cfg.campaign.teacher_checkpoint), label_issues=cfg.curation.label_issues
    )
    return [classes[n] for n in names]


def run_round(ctx: StageContext, *, tracker: Any = None) -> dict[str, Any]:
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
        results[stage.name] = stage(ctx).execute()
        ctx = ctx.with_result(stage.name, results[stage.name])
    doc = round_document(ctx, results)
    run_id = ctx.tracking["run_id"] if ctx.tracking else None
    if tracker is not None and run_id:
        _log_round(tracker, run_id, lay, doc)
        _log_inputs(tracker, run_id, ctx, results)
        if cfg.tracking.log_models:
            doc["mlflow_model"] = _log_model(tracker, run_id, ctx, doc)
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
        "student": {"path": stored_path(ctx.root, student), "fingerprint": evaluated},
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
    if index:
        doc["thresholds"] = fs.read_json(lay.thresholds)["thresholds_by_class"]
        doc["quality"] = fs.read_json(lay.quality)
    return doc


def _log_inputs(tracker: Any, run_id: str, ctx: StageContext, results: dict[str, StageResult]) -> None:
    """The labelled set and (rounds > 0) the selection as the run's MLflow datasets, digests = stage fingerprints."""
    import pyarrow.parquet as pq

    labelled = ctx.campaign.labelled
    inputs = [(labelled, "labelled", ctx.upstream["partition"].fingerprint, "training")]
    if "select" in results:
        sel = ctx.round_layout.selection
        inputs.append((sel, "selection", results["select"].fingerprint, "pseudo_labels"))
    for path, name, digest, context in inputs:
        filesystem, local = fs.resolve(path)
        schema = pq.read_schema(local, filesystem=filesystem)
        tracker.log_dataset(
            run_id, path, name=f"{ctx.cfg.campaign.name}/{name}", digest=digest, context=context, schema=schema
        )


def _log_model(tracker: Any, run_id: str, ctx: StageContext, doc: dict[str, Any]) -> dict[str, str]:
    """The round's student as the run's MLflow model, registered as a version of the campaign's registered model;
    one labelled face is its input example."""
    from engine.io.tars import read_images
    from engine.layout import shard_tar

    first = fs.read_parquet(ctx.campaign.labelled, columns=["key", "shard"]).slice(0, 1).to_pylist()[0]
    example = read_images(shard_tar(ctx.root, first["shard"]), {first["key"]})[first["key"]]
    student = doc["student"]
    uri = tracker.log_checkpoint_model(
        run_id,
        root_path(ctx.root, student["path"]),
        example=example,
        metadata={"round": doc["round"], "campaign": doc["campaign"], "fingerprint": student["fingerprint"]},
    )
    version = tracker.register_model(
        ctx.cfg.campaign.name,
        uri,
        run_id,
        tags={"round": doc["round"], "val_macro_f1": doc["metrics"].get("val/macro_f1")},
    )
    return {"uri": uri, "registered_model": ctx.cfg.campaign.name, "version": version}


def _log_round(tracker: Any, run_id: str, lay: RoundLayout, doc: dict[str, Any]) -> None:
    """Metrics and artifacts of a committed round into its MLflow child run (from committed files only)."""
    step = doc["round"]
    metrics = {k: float(v) for k, v in doc["metrics"].items()}
    if "thresholds" in doc:
        for c, t in doc["thresholds"].items():
            if t is not None:
                metrics[f"threshold/tau/{c}"] = float(t)
        q = doc["quality"]
        metrics["select/selected"] = float(q["selected"])
        metrics["select/mask_rate"] = float(q["mask_rate"])
        if q.get("precision") is not None:
            metrics["select/precision"] = float(q["precision"])
        for c, v in q["per_class"].items():
            metrics[f"select/selected/{c}"] = float(v["selected"])
            if v.get("precision") is not None:
                metrics[f"select/precision/{c}"] = float(v["precision"])
    train_counts = doc["stages"].get("train", {}).get("counts", {})
    for k in ("best_epoch", "best_val_macro_f1"):
        if train_counts.get(k) is not None:
            metrics[f"train/{k}"] = float(train_counts[k])
    tracker.log_metrics(run_id, metrics, step=step)
    for path in [
        lay.thresholds,
        lay.quality,
        lay.metrics,
        lay.confusion_png("val"),
        lay.confusion_png("test"),
    ]:
        if fs.exists(path):
            tracker.log_artifact(run_id, path)
