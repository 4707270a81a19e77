"""What a storage root holds, read from committed files and writer locks only (no Ray, no MLflow): its sources
(counts, quarantine reasons) and campaigns (rounds, the state of each stage, val/test macro-F1, promotion, MLflow run
ids). ``fer-engine status <root>`` prints :func:`format_status` of :func:`storage_status`.

A stage directory is in one of four states:

- ``committed``: its ``_SUCCESS.json`` is written;
- ``running``: a live process holds its writer lock (engine.io.lock; local storage only);
- ``interrupted``: it has outputs or a ``_RUNNING.json`` but no ``_SUCCESS.json`` and no live writer (a re-run
  resumes it);
- ``missing``: nothing there yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.io import fs
from engine.io.lock import is_held
from engine.layout import SUCCESS, CampaignLayout, SourceLayout, join, round_name, round_stage_names
from engine.tracking import default_uri

STATES = ("committed", "running", "interrupted", "missing")


@dataclass(frozen=True)
class SourceStatus:
    """One ingested (or ingesting) source."""

    name: str
    state: str
    counts: dict[str, Any] = field(default_factory=dict)
    """The ingest stage's committed counts (kept, quarantined, by_reason, by_split, shards, …); {} until committed."""


@dataclass(frozen=True)
class RoundStatus:
    """One round of a campaign."""

    index: int
    status: str
    """campaign.json's word for it: done, running, or planned (not started)."""
    stages: dict[str, str]
    """Stage name → state, for the stages this round runs, in order."""
    val_macro_f1: float | None = None
    test_macro_f1: float | None = None
    promoted: bool | None = None
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class CampaignStatus:
    """One campaign: its partition, rounds and teacher."""

    name: str
    partition: str
    rounds: list[RoundStatus]
    teacher_round: int | None
    stopped: str | None
    mlflow_run_id: str | None
    tracking_uri: str | None
    reviews: list[dict[str, Any]] = field(default_factory=list)
    """Per review batch: ``round``, ``batch``, ``faces``, ``rule``, ``per_class`` (teacher's guesses), ``dir``, and
    ``answers`` (the import's counts; None while the batch waits for people)."""


@dataclass(frozen=True)
class PretrainStatus:
    """One pretraining run under ``<root>/pretrain/`` (engine/stages/pretrain.py)."""

    name: str
    """Its folder: the stage's fingerprint, 16 hex digits."""
    state: str
    counts: dict[str, Any]
    """The committed counts (faces, epochs, probe figures); {} until it commits."""


@dataclass(frozen=True)
class StorageStatus:
    root: str
    sources: list[SourceStatus]
    campaigns: list[CampaignStatus]
    pretrains: list[PretrainStatus] = field(default_factory=list)


def stage_state(out_dir: str) -> str:
    """``committed``, ``running``, ``interrupted`` or ``missing`` for the stage output directory ``out_dir``."""
    if fs.exists(join(out_dir, SUCCESS)):
        return "committed"
    if is_held(out_dir):
        return "running"
    return "interrupted" if fs.exists(out_dir) else "missing"


def storage_status(root: str) -> StorageStatus:
    """The sources and campaigns stored under ``root`` (sorted by name)."""
    sources = [_source(root, name) for name in fs.subdirs(join(root, "sources"))]
    campaigns = [_campaign(root, name) for name in fs.subdirs(join(root, "campaigns"))]
    pretrains = []
    for name in fs.subdirs(join(root, "pretrain")):
        out_dir = join(root, "pretrain", name)
        marker = fs.read_json_or_none(join(out_dir, SUCCESS))
        pretrains.append(PretrainStatus(name, stage_state(out_dir), (marker or {}).get("counts", {})))
    return StorageStatus(root, sources, campaigns, pretrains)


def _source(root: str, name: str) -> SourceStatus:
    lay = SourceLayout(root, name)
    marker = fs.read_json_or_none(lay.success) or {}
    return SourceStatus(name, stage_state(lay.dir), dict(marker.get("counts", {})))


def _campaign(root: str, name: str) -> CampaignStatus:
    lay = CampaignLayout(root, name)
    state: dict[str, Any] = fs.read_json_or_none(lay.state) or {}
    flat: dict[str, Any] = fs.read_json_or_none(lay.config) or {}
    planned = int(flat.get("campaign.rounds", 0))
    entries: dict[str, Any] = state.get("rounds", {})
    indices = sorted({*range(planned + 1), *(int(k) for k in entries)})
    rounds = []
    for r in indices:
        entry = entries.get(str(r), {})
        rl = lay.round(r)
        names = round_stage_names(
            r,
            teacher_checkpoint=bool(flat.get("campaign.teacher_checkpoint")),
            label_issues=bool(flat.get("curation.label_issues")),
            review=bool(flat.get("review.size")) or fs.exists(rl.review_dir),
            reviewed=fs.exists(rl.reviewed_dir),
            members=int(flat.get("campaign.teacher_members", 1)) > 1,
        )
        rounds.append(
            RoundStatus(
                index=r,
                status=entry.get("status", "planned"),
                stages={s: stage_state(rl.stage_dir(s)) for s in names},
                val_macro_f1=entry.get("val_macro_f1"),
                test_macro_f1=entry.get("test_macro_f1"),
                promoted=entry.get("promoted"),
                mlflow_run_id=entry.get("mlflow_run_id"),
            )
        )
    teacher = state.get("teacher") or {}
    reviews = []
    for r in indices:
        rl = lay.round(r)
        marker = fs.read_json_or_none(join(rl.review_dir, SUCCESS))
        if marker is None:
            continue
        answered = fs.read_json_or_none(join(rl.answers_dir, SUCCESS))
        reviews.append(
            {
                "round": r,
                "batch": marker["extra"]["batch"],
                "faces": marker["counts"]["faces"],
                "rule": marker["extra"]["rule"],
                "per_class": marker["extra"]["per_class"],
                "dir": rl.review_dir,
                "answers": None if answered is None else answered["counts"],
            }
        )
    return CampaignStatus(
        name=name,
        partition=stage_state(lay.partition_dir),
        rounds=rounds,
        teacher_round=teacher.get("round"),
        stopped=state.get("stopped"),
        mlflow_run_id=state.get("mlflow_run_id"),
        tracking_uri=state.get("tracking_uri") or (default_uri(root) if state.get("mlflow_run_id") else None),
        reviews=reviews,
    )


_MARK = {"committed": "✓", "running": "▶", "interrupted": "…", "missing": "·"}


def format_status(st: StorageStatus) -> str:
    """A plain-text view of :class:`StorageStatus`: a sources table, then one table of rounds per campaign."""
    lines = [f"storage root {st.root}", ""]
    if st.sources:
        rows = [["source", "state", "kept", "quarantined", "shards", "train/val/test", "quarantine reasons"]]
        for s in st.sources:
            c = s.counts
            split = c.get("by_split", {})
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("by_reason", {}).items())) or "-"
            rows.append(
                [
                    s.name,
                    s.state,
                    _int(c.get("kept")),
                    _int(c.get("quarantined")),
                    _int(c.get("shards")),
                    "/".join(_int(split.get(k, 0)) for k in ("train", "val", "test")) if split else "-",
                    reasons,
                ]
            )
        lines += _table(rows)
    else:
        lines.append("no sources ingested")
    if st.pretrains:
        rows = [["pretraining", "state", "faces", "epochs", "faces/s", "probe val F1 (untrained)"]]
        for p in st.pretrains:
            c = p.counts
            probe = c.get("probe_val_macro_f1")
            rows.append(
                [
                    p.name,
                    p.state,
                    _int(c.get("faces")),
                    _int(c.get("epochs")),
                    _int(c.get("images_per_s")),
                    "-" if probe is None else f"{probe:.3f} ({c['probe_untrained_val_macro_f1']:.3f})",
                ]
            )
        lines += ["", *_table(rows)]
    for camp in st.campaigns:
        teacher = f"r{camp.teacher_round:03d}" if camp.teacher_round is not None else "none yet"
        lines += [
            "",
            f"campaign {camp.name}: partition {camp.partition}, teacher {teacher}, "
            f"MLflow run {camp.mlflow_run_id or '-'}" + (f" ({camp.tracking_uri})" if camp.tracking_uri else ""),
        ]
        if camp.stopped:
            lines.append(f"stopped: {camp.stopped}")
        rows = [["round", "status", "stages", "val F1", "test F1", "promoted", "MLflow run"]]
        for r in camp.rounds:
            stages = " ".join(f"{_MARK[v]}{k}" for k, v in r.stages.items())
            rows.append(
                [
                    round_name(r.index),
                    r.status,
                    stages,
                    _f1(r.val_macro_f1),
                    _f1(r.test_macro_f1),
                    "-" if r.promoted is None else ("yes" if r.promoted else "no"),
                    r.mlflow_run_id or "-",
                ]
            )
        lines += _table(rows)
        for rv in camp.reviews:
            guesses = ", ".join(f"{k} {v}" for k, v in rv["per_class"].items() if v)
            head = f"review {round_name(rv['round'])}: batch {rv['batch']}, {rv['faces']} faces by {rv['rule']}"
            a = rv["answers"]
            if a is None:
                lines.append(f"{head}: WAITING FOR PEOPLE in {rv['dir']} (teacher's guesses: {guesses})")
            else:
                agree = "-" if a["agreement"] is None else f"{a['agreement']:.1%}"
                lines.append(
                    f"{head}: answered, {a['labelled']} labelled ({a['relabelled']} labels changed), people agreed "
                    f"with the teacher on {agree}"
                )
    lines += ["", "stages: " + "  ".join(f"{m} {s}" for s, m in _MARK.items())]
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _f1(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
