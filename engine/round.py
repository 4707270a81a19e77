"""One round: score → threshold → select → train → evaluate, each skipped when committed; ``round.json`` last."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import Config
from engine.io import fs
from engine.labels import LabelSpace, campaign_space
from engine.layout import CampaignLayout, RoundLayout, join
from engine.stages.base import StageResult
from engine.stages.partition import PartitionRule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherRef:
    """The checkpoint(s) scoring a round and their combined fingerprint."""

    paths: tuple[str, ...]
    fingerprint: str
    round: int = -1


def _results_doc(results: dict[str, StageResult]) -> dict[str, Any]:
    return {
        k: {"fingerprint": r.fingerprint, "counts": r.counts, "skipped": r.skipped, "seconds": r.seconds}
        for k, r in results.items()
    }


def pool_table(root: str, rule: PartitionRule, path: str) -> int:
    """Write the unlabelled pool as (key, shard, label=-1, idx) for the online branch; returns its size."""
    from engine.stages.score import list_shards, pool_keys

    labelled = frozenset(rule.labelled_keys())
    keys, shards = [], []
    for ref in list_shards(root, rule.pool_sources):
        k = pool_keys(rule, ref, labelled)
        keys += k
        shards += [ref.name] * len(k)
    t = pa.table(
        {
            "key": keys,
            "shard": shards,
            "label": pa.array(np.full(len(keys), -1), pa.int16()),
            "idx": pa.array(np.arange(len(keys)), pa.int64()),
        }
    )
    if not fs.exists(path):
        fs.write_parquet(path, t)
    return len(keys)


def run_round(
    cfg: Config,
    index: int,
    *,
    teacher: TeacherRef | None,
    rule: PartitionRule,
    partition_fp: str,
    tracker: Any = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run (or resume, or skip) round ``index`` and return its ``round.json`` document."""
    from engine.stages.evaluate import EvaluateStage
    from engine.stages.select import SelectStage
    from engine.stages.threshold import ThresholdStage, load_thresholds
    from engine.stages.train import TrainStage

    root, name = cfg.storage.root, cfg.campaign.name
    lay: RoundLayout = CampaignLayout(root, name).round(index)
    done = fs.read_json_or_none(lay.state)
    if done is not None:
        log.info("round r%03d: already complete (round.json present)", index)
        return dict(done)
    space = campaign_space(cfg)
    oe = cfg.storage.on_existing
    labelled_path = rule.labelled_keys_path
    results: dict[str, StageResult] = {}
    mlflow = {"tracking_uri": tracker.uri, "run_id": run_id} if tracker is not None and run_id else None
    selection_path = None
    upstream = {"partition": partition_fp}
    if index > 0:
        from engine.stages.score import ScoreStage

        assert teacher is not None
        results["score"] = ScoreStage(
            root,
            lay,
            cfg.score,
            teacher_paths=teacher.paths,
            teacher_fingerprint=teacher.fingerprint,
            rule=rule,
            upstream=upstream,
            on_existing=oe,
        ).execute()
        results["threshold"] = ThresholdStage(
            lay, cfg.threshold, space, score_fp=results["score"].fingerprint, on_existing=oe
        ).execute()
        thr = load_thresholds(lay)
        from engine.thresholds.base import thresholds_from_json

        items = _select_items(root, rule, lay)
        lab = fs.read_parquet(labelled_path, columns=["label"])["label"].to_numpy()
        results["select"] = SelectStage(
            lay,
            cfg.select,
            items=items,
            thresholds=thresholds_from_json(thr["thresholds"]),
            labelled_counts=np.bincount(lab, minlength=len(space.classes)),
            labelled_keys=frozenset(rule.labelled_keys()),
            policy=cfg.threshold.policy,
            class_names=list(space.classes),
            upstream={"threshold": results["threshold"].fingerprint, "partition": partition_fp},
            on_existing=oe,
        ).execute()
        selection_path = lay.selection if results["select"].counts["selected"] else None
        upstream = {"select": results["select"].fingerprint, "partition": partition_fp}
    pool_ds, n_pool = None, 0
    if cfg.train.online_policy:
        from engine.samples import samples_dataset

        path = lay.online_pool
        n_pool = pool_table(root, rule, path)
        pool_ds = samples_dataset(root, path).select_columns(["image", "idx"])
    if index == 0 and cfg.campaign.teacher_checkpoint:
        student, student_fp = cfg.campaign.teacher_checkpoint, teacher.fingerprint if teacher else ""
    else:
        results["train"] = TrainStage(
            root,
            lay,
            cfg.train,
            cfg.model,
            space,
            labelled_path=labelled_path,
            selection_path=selection_path,
            pool_dataset=pool_ds,
            num_unlabelled=n_pool,
            threshold_cfg=cfg.threshold,
            init_checkpoint=teacher.paths[0] if teacher else None,
            campaign=name,
            upstream={**upstream, "teacher": teacher.fingerprint if (teacher and cfg.train.warm_start) else ""},
            mlflow=mlflow,
            on_existing=oe,
            rule=rule,
        ).execute()
        from engine.models.checkpoint import checkpoint_fingerprint

        student, student_fp = lay.student, checkpoint_fingerprint(lay.student)
    results["evaluate"] = EvaluateStage(
        lay.eval_dir,
        root,
        cfg.eval,
        space,
        checkpoint=student,
        checkpoint_fp=student_fp,
        rule=rule,
        upstream={"partition": partition_fp},
        on_existing=oe,
        label=f"evaluate r{index:03d}",
    ).execute()
    metrics = fs.read_json(lay.metrics)
    doc = {
        "round": index,
        "campaign": name,
        "teacher": {"paths": list(teacher.paths), "fingerprint": teacher.fingerprint} if teacher else None,
        "student": {"path": student, "fingerprint": student_fp},
        "policy": cfg.threshold.policy if index > 0 else None,
        "stages": _results_doc(results),
        "metrics": {
            f"{s}/{k}": metrics[s][k]
            for s in cfg.eval.splits
            if s in metrics
            for k in ("macro_f1", "accuracy", "abaw2021", "n", "ccc_valence", "ccc_arousal", "ccc_mean")
            if metrics[s].get(k) is not None
        },
        "mlflow_run_id": run_id,
    }
    if index > 0:
        doc["thresholds"] = load_thresholds(lay)["thresholds_by_class"]
        doc["quality"] = fs.read_json(lay.quality)
    if tracker is not None and run_id:
        _log_round(tracker, run_id, lay, doc, space)
    from engine.report import finish_round  # report.html (+ label issues when configured), before round.json

    finish_round(cfg, lay, doc, partition_fp=partition_fp, tracker=tracker, run_id=run_id)
    fs.write_json(lay.state, doc)
    return doc


def _select_items(root: str, rule: PartitionRule, lay: RoundLayout) -> list[dict[str, Any]]:
    from engine.stages.score import list_shards

    return [
        {"shard": s.name, "part": lay.score_part(s.name), "manifest": s.manifest}
        for s in list_shards(root, rule.pool_sources)
        if fs.exists(lay.score_part(s.name))
    ]


def _log_round(tracker: Any, run_id: str, lay: RoundLayout, doc: dict[str, Any], space: LabelSpace) -> None:
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
        join(lay.eval_dir, "confusion_val.png"),
        join(lay.eval_dir, "confusion_test.png"),
    ]:
        if fs.exists(path):
            tracker.log_artifact(run_id, path)
