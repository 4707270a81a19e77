"""Label Studio's formats, both ways (docs/review.md): the labeling config and tasks of a review batch, and the
answers in a Label Studio JSON export. No I/O and no Label Studio import: the export folder is plain files, and the
answers come from the export file people download (or from ``GET /api/projects/{id}/export?exportType=JSON``).

An answer per task is the **majority** of its submitted annotations: a class name gives that label; a tie, "unsure",
or no submitted annotation (none, or only cancelled / skipped ones) gives no label; "not a face" takes the face out
of the labelled set and the pool.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ReviewImportError

FROM_NAME = "emotion"
TO_NAME = "image"
NOT_A_FACE = "not a face"
UNSURE = "unsure"
TIE = "tie"
UNANSWERED = "unanswered"
SKIPPED = "skipped"
"""Answers that give no label (besides :data:`UNSURE`): a tie between choices, a task nobody submitted, a task only
cancelled (skipped) annotations."""


def label_config(class_names: Sequence[str]) -> str:
    """The labeling config: one image, one single choice among the class names, "not a face" and "unsure"."""
    choices = "".join(f'<Choice value="{html.escape(n, quote=True)}"/>' for n in (*class_names, NOT_A_FACE, UNSURE))
    return (
        f'<View><Image name="{TO_NAME}" value="$image"/>'
        f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">{choices}</Choices>'
        '<Text name="why" value="$why"/></View>'
    )


def local_file_url(relative: str) -> str:
    """The URL Label Studio's local-files storage serves a file under its document root by (the export folder)."""
    return f"/data/local-files/?d={relative}"


def task(
    *, batch: str, key: str, image: str, why: str, guess: str | None, guess_score: float | None, model_version: str
) -> dict[str, Any]:
    """One task: the face, what the engine knows (``key``, ``batch``: they come back in the export unchanged) and
    the teacher's guess as a pre-annotation (none for a face without one)."""
    out: dict[str, Any] = {"data": {"image": local_file_url(image), "key": key, "batch": batch, "why": why}}
    if guess is not None:
        out["predictions"] = [
            {
                "model_version": model_version,
                "score": None if guess_score is None else round(float(guess_score), 6),
                "result": [
                    {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [guess]}}
                ],
            }
        ]
    return out


@dataclass(frozen=True)
class Answer:
    """What people said about one face."""

    key: str
    answer: str
    """A class name, or NOT_A_FACE / UNSURE / TIE / UNANSWERED / SKIPPED."""
    votes: dict[str, int] = field(default_factory=dict)
    annotators: tuple[str, ...] = ()
    submitted: int = 0
    cancelled: int = 0
    first_at: str | None = None
    last_at: str | None = None
    lead_time_s: float = 0.0


def read_export(text: str, where: str) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export (a list of task objects)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReviewImportError(
            f"{where} is not JSON ({exc.msg} at line {exc.lineno}); export the project from Label Studio as JSON"
        ) from None
    if not isinstance(doc, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in doc):
        raise ReviewImportError(
            f"{where} is not a Label Studio JSON export (a list of tasks with 'data'); export the project as JSON, "
            "not JSON_MIN or CSV"
        )
    return doc


def _choice(annotation: Mapping[str, Any]) -> str | None:
    for r in annotation.get("result") or []:
        if r.get("type") == "choices" and r.get("from_name") == FROM_NAME:
            picked = (r.get("value") or {}).get("choices") or []
            return str(picked[0]) if picked else None
    return None


def _annotator(a: Mapping[str, Any]) -> str:
    who = a.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("id"))
    return str(who)


def answers(
    tasks: Sequence[Mapping[str, Any]], *, batch: str, keys: set[str], class_names: Sequence[str]
) -> list[Answer]:
    """People's answer per task of an export of review batch ``batch`` (whose faces are ``keys``).

    Checked before anything is returned, each a :class:`ReviewImportError` naming what to do: every task carries
    this batch's id (else: another project's export), every key is one the batch sent, no key twice, every choice is
    one of the labeling config's.
    """
    known = {*class_names, NOT_A_FACE, UNSURE}
    batches = Counter(str(t["data"].get("batch")) for t in tasks)
    if set(batches) != {batch}:
        other = ", ".join(sorted(b for b in batches if b != batch))
        raise ReviewImportError(
            f"this export holds tasks of batch(es) {other}, not of batch {batch}: it is an export of another project "
            "(or of tasks not made by fer-engine review export); export the project the batch was imported into"
        )
    seen: set[str] = set()
    out = []
    for t in tasks:
        key = str(t["data"].get("key"))
        if key not in keys:
            raise ReviewImportError(
                f"task {t.get('id')} holds key {key!r}, which batch {batch} never sent; remove tasks added by hand "
                "from the project (or export only the engine's tasks) and import again"
            )
        if key in seen:
            raise ReviewImportError(f"key {key!r} appears in two tasks of the export; import each task once")
        seen.add(key)
        submitted = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        cancelled = sum(1 for a in t.get("annotations") or [] if a.get("was_cancelled"))
        votes: Counter[str] = Counter()
        for a in submitted:
            c = _choice(a)
            c = UNSURE if c is None else c
            if c not in known:
                raise ReviewImportError(
                    f"task {t.get('id')} (key {key!r}) was answered {c!r}, which is not a choice of this batch "
                    f"({', '.join(sorted(known))}); fix the labeling config to the one the export folder holds"
                )
            votes[c] += 1
        out.append(_decide(key, votes, submitted, cancelled))
    return out


def _decide(key: str, votes: Counter[str], submitted: Sequence[Mapping[str, Any]], cancelled: int) -> Answer:
    if not submitted:
        answer = SKIPPED if cancelled else UNANSWERED
    else:
        ranked = votes.most_common()
        answer = TIE if len(ranked) > 1 and ranked[0][1] == ranked[1][1] else ranked[0][0]
    times = sorted(str(a["created_at"]) for a in submitted if a.get("created_at"))
    return Answer(
        key=key,
        answer=answer,
        votes=dict(sorted(votes.items())),
        annotators=tuple(sorted({_annotator(a) for a in submitted})),
        submitted=len(submitted),
        cancelled=cancelled,
        first_at=times[0] if times else None,
        last_at=times[-1] if times else None,
        lead_time_s=round(sum(float(a.get("lead_time") or 0.0) for a in submitted), 3),
    )
