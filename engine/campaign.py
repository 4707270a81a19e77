"""A campaign: ingest its sources, partition them, then N rounds with teacher promotion and early stop.

``campaign.json`` is the campaign's state (MLflow parent run id, each round's child run id, the current teacher,
the stop reason); ids are stored before a round's work starts, so a re-run logs into the same runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.config import Config, flatten
from engine.errors import ConfigError, ReviewWaiting
from engine.io import fs
from engine.layout import CampaignLayout, stored_path
from engine.round import run_round
from engine.stages.base import StageContext, TeacherRef

if TYPE_CHECKING:
    from engine.tracking import Tracker

log = logging.getLogger(__name__)


def _tracker(cfg: Config) -> Tracker:
    from engine.tracking import tracker_for

    return tracker_for(cfg.storage.root, cfg.tracking.uri, cfg.tracking.experiment)


def prepare(cfg: Config) -> StageContext:
    """Ingest every source the campaign uses, commit its partition and, with ``campaign.pretrain.method``, the
    pretrained backbone; returns the campaign's stage context (those results as upstream, no round yet)."""
    from engine.stages.ingest import IngestStage
    from engine.stages.partition import PartitionStage, used_sources

    if not cfg.campaign.labelled:
        raise ConfigError("campaign.labelled is empty: name at least one labelled source")
    ctx = StageContext(cfg)
    for s in used_sources(cfg.campaign):
        ctx = ctx.with_result(f"ingest:{s}", IngestStage(dataclasses.replace(ctx, source=s)).execute())
    ctx = ctx.with_result("partition", PartitionStage(ctx).execute())
    if cfg.campaign.pretrain.method:  # round 0 starts from the pretrained backbone (engine/stages/pretrain.py)
        from engine.stages.pretrain import PretrainStage

        ctx = ctx.with_result("pretrain", PretrainStage(ctx).execute())
    return ctx


def check_inputs(cfg: Config) -> None:
    """What a campaign can check before Ray or MLflow start: every source it names is configured, and a given round-0
    teacher is a readable engine checkpoint (its metadata only)."""
    from engine.stages.partition import used_sources

    if not cfg.campaign.labelled:
        raise ConfigError("campaign.labelled is empty: name at least one labelled source (see conf/demo.yaml)")
    for name in used_sources(cfg.campaign):
        cfg.source(name)
    if cfg.campaign.teacher_checkpoint:
        from engine.models.checkpoint import read_checkpoint_meta

        read_checkpoint_meta(cfg.campaign.teacher_checkpoint)


def completed(cfg: Config) -> dict[str, Any] | None:
    """``campaign.json`` when the campaign has nothing left to do with this very config, else None.

    Complete means: written by a run with the same config fingerprint, and either stopped early or every round
    0..``campaign.rounds`` done with its ``round.json`` committed. Reads two small files: no Ray, no MLflow.
    """
    from engine.fingerprint import fingerprint

    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    state = fs.read_json_or_none(lay.state)
    if not state or state.get("config_fingerprint") != fingerprint(cfg):
        return None
    rounds = state.get("rounds", {})
    done = [r for r in range(cfg.campaign.rounds + 1) if rounds.get(str(r), {}).get("status") == "done"]
    if not all(fs.exists(lay.round(r).state) for r in done):
        return None
    if state.get("stopped") or len(done) == cfg.campaign.rounds + 1:
        return dict(state)
    return None


_DRIVING: set[str] = set()
"""Campaign directories whose driver lock this process holds (:func:`campaign_lock` is re-entrant)."""


@contextlib.contextmanager
def campaign_lock(cfg: Config) -> Iterator[None]:
    """Hold the campaign's driver lock (``<root>/campaigns/<name>.lock``) for the ``with`` body: one driver per
    campaign. A second driver gets a :class:`engine.errors.WriterLocked` naming the holder (pid, host, start)
    before it writes anything, MLflow included. Re-entrant within the process that holds it (the campaign job
    takes it before Ray starts, then calls :func:`run_campaign`, which takes it too)."""
    from engine.io.lock import writer_lock

    out_dir = CampaignLayout(cfg.storage.root, cfg.campaign.name).dir
    if out_dir in _DRIVING:
        yield
        return
    with writer_lock(out_dir, f"campaign {cfg.campaign.name}"):
        _DRIVING.add(out_dir)
        try:
            yield
        finally:
            _DRIVING.discard(out_dir)


def run_campaign(cfg: Config, *, max_rounds: int | None = None) -> dict[str, Any]:
    """Run rounds 0..``campaign.rounds`` (or only up to ``max_rounds`` new ones) under the campaign's driver lock
    (:func:`campaign_lock`); returns ``campaign.json``."""
    with campaign_lock(cfg):
        return _run_campaign(cfg, max_rounds=max_rounds)


def _run_campaign(cfg: Config, *, max_rounds: int | None) -> dict[str, Any]:
    from engine.fingerprint import fingerprint

    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    campaign_ctx = prepare(cfg)
    tracker = _tracker(cfg)
    state = fs.read_json_or_none(lay.state) or {
        "name": cfg.campaign.name,
        "rounds": {},
        "teacher": None,
        "stopped": None,
    }
    state["mlflow_run_id"] = tracker.ensure_campaign_run(
        cfg.campaign.name,
        state.get("mlflow_run_id"),
        params={**flatten(cfg), "config_fingerprint": fingerprint(cfg)},
        tags={"engine.campaign": cfg.campaign.name},
    )
    state["config_fingerprint"] = fingerprint(cfg)
    up = campaign_ctx.upstream
    state["prepared"] = {
        "ingest": {k.split(":", 1)[1]: _result_doc(r) for k, r in up.items() if k.startswith("ingest:")},
        "partition": _result_doc(up["partition"]),
        **({"pretrain": {**_result_doc(up["pretrain"]), **up["pretrain"].extra}} if "pretrain" in up else {}),
    }
    state["tracking_uri"] = cfg.tracking.uri  # None: the root's own store (engine.summary.tracking_uri derives it)
    state["mlflow_experiment_id"] = tracker.experiment_id
    tracker.log_dataset(
        state["mlflow_run_id"],
        lay.labelled,
        name=f"{cfg.campaign.name}/labelled",
        digest=up["partition"].fingerprint,
        context="training",
    )
    if "pretrain" in up:
        _log_pretrain(tracker, state["mlflow_run_id"], up["pretrain"])
    fs.write_json(lay.state, state)
    fs.write_json(lay.config, flatten(cfg))
    new = 0
    for r in range(cfg.campaign.rounds + 1):
        if state["stopped"]:
            break
        entry = state["rounds"].get(str(r), {})
        if entry.get("status") == "done":
            continue
        if max_rounds is not None and new >= max_rounds:
            break
        teacher = _teacher(state, cfg)
        if r > 0 and teacher is None:
            raise RuntimeError("no teacher to score round 1: round 0 did not complete")
        run_id = tracker.ensure_round_run(
            state["mlflow_run_id"], r, entry.get("mlflow_run_id"), params=round_params(cfg, r)
        )
        state["rounds"][str(r)] = {**entry, "mlflow_run_id": run_id, "status": "running"}
        fs.write_json(lay.state, state)
        round_ctx = dataclasses.replace(
            campaign_ctx, round=r, teacher=teacher, tracking={"tracking_uri": tracker.uri, "run_id": run_id}
        )
        try:
            doc = run_round(round_ctx, tracker=tracker)
        except ReviewWaiting as wait:  # people's turn: the round goes on when their answers are imported
            state["rounds"][str(r)]["status"] = "waiting_review"
            state["waiting_review"] = {"round": r, "dir": stored_path(cfg.storage.root, wait.review_dir)}
            fs.write_json(lay.state, state)
            log.warning("%s", wait)
            return dict(state)
        state.pop("waiting_review", None)
        tracker.set_terminated(run_id, "FINISHED")
        _promote(state, doc, cfg)
        if doc.get("mlflow_model") and state["rounds"][str(r)]["promoted"]:
            from engine.tracking import CHAMPION

            model = doc["mlflow_model"]
            tracker.set_alias(model["registered_model"], CHAMPION, model["version"])
            state["rounds"][str(r)]["model_version"] = model["version"]
        fs.write_json(lay.state, state)
        new += 1
    if new:
        from engine.tracking import CAMPAIGN_BEST_VAL

        tracker.log_metrics(
            state["mlflow_run_id"],
            {CAMPAIGN_BEST_VAL: (state["teacher"] or {}).get("val_macro_f1")},
            step=max((int(k) for k in state["rounds"]), default=0),
        )
    if state["stopped"] or all(
        state["rounds"].get(str(r), {}).get("status") == "done" for r in range(cfg.campaign.rounds + 1)
    ):
        tracker.set_terminated(state["mlflow_run_id"], "FINISHED")
    return dict(state)


def round_params(cfg: Config, index: int) -> dict[str, Any]:
    """The params of round ``index``'s MLflow run: what shapes its student (``model.*``, ``train.*``, with the
    ``student.*`` keys applied from round 1) and, from round 1, how its pseudo-labels were chosen (``threshold.*``:
    the policy and its parameters; ``select.*``: the cap and balance rules) and people's review (``review.*``)."""
    sections = ("model", "train") + (("threshold", "select", "review") if index > 0 else ())
    flat = flatten(cfg.for_round(index))
    return {"round": index, **{k: v for k, v in flat.items() if k.split(".", 1)[0] in sections}}


def _log_pretrain(tracker: Tracker, run_id: str, result: Any) -> None:
    """The pretraining's epochs (``pretrain/ssl_loss``, ``pretrain/spread``, step = epoch) and its linear probe
    (``pretrain/probe_val_macro_f1`` and the untrained net's) on the campaign's MLflow run."""
    for r in result.extra.get("history", []):
        tracker.log_metrics(run_id, {f"pretrain/{k}": r[k] for k in ("ssl_loss", "spread")}, step=int(r["epoch"]))
    probe = {f"pretrain/{k}": v for k, v in result.counts.items() if k.startswith("probe") and "faces" not in k}
    tracker.log_metrics(run_id, probe)


def _result_doc(r: Any) -> dict[str, Any]:
    return {"counts": r.counts, "skipped": r.skipped, "seconds": r.seconds, "fingerprint": r.fingerprint}


def _teacher(state: dict[str, Any], cfg: Config) -> TeacherRef | None:
    t = state.get("teacher")
    if t:
        return TeacherRef.from_record(cfg.storage.root, t)
    if cfg.campaign.teacher_checkpoint:
        from engine.models.checkpoint import checkpoint_fingerprint

        path = cfg.campaign.teacher_checkpoint
        return TeacherRef((path,), checkpoint_fingerprint(path), -1)
    return None


def _promote(state: dict[str, Any], doc: dict[str, Any], cfg: Config) -> None:
    """The student becomes the teacher when it beats it on val macro-F1 (round 0 always becomes the teacher: its
    ensemble with ``campaign.teacher_members``)."""
    r = doc["round"]
    f1 = doc["metrics"].get("val/macro_f1")
    cur = state.get("teacher")
    better = cur is None or (f1 is not None and f1 > (cur.get("val_macro_f1") or -1.0))
    state["rounds"][str(r)].update(
        status="done", val_macro_f1=f1, test_macro_f1=doc["metrics"].get("test/macro_f1"), promoted=bool(better)
    )
    if better:
        state["teacher"] = {
            "paths": list(doc["student"].get("members") or [doc["student"]["path"]]),
            "fingerprint": doc["student"]["fingerprint"],
            "round": r,
            "val_macro_f1": f1,
        }
        log.info("round r%03d: student promoted to teacher (val macro-F1 %.4f)", r, f1 or 0.0)
    elif cfg.campaign.stop_when_no_gain:
        best = (cur or {}).get("val_macro_f1")
        state["stopped"] = f"round {r}: student val macro-F1 {f1} did not beat the teacher's {best}"
        log.warning("campaign stopped: %s", state["stopped"])
