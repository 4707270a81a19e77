"""The report's review section: the batch people were asked about, per class and as a gallery with why each face
was chosen, and, once their answers are imported, what they said and how often they agreed with the teacher."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from engine.config import ReportConfig
from engine.io import fs
from engine.layout import SUCCESS, join
from engine.products.report.galleries import ImageRequests
from engine.products.report.markup import html_table
from engine.stored import RoundRef


def review_section(ref: RoundRef, names: list[str], rc: ReportConfig, images: ImageRequests) -> str:
    """HTML of the round's review batch and answers; a one-line note when the round asked nobody."""
    lay = ref.layout
    marker = fs.read_json_or_none(join(lay.review_dir, SUCCESS))
    if marker is None:
        return (
            "<section><h2>Review by people</h2><p>This round asked nobody (set <code>review.size</code>, or run "
            "<code>fer-engine review export</code> before a round: docs/review.md).</p></section>"
        )
    batch = fs.read_parquet(lay.review_batch).to_pylist()
    answers = fs.read_json_or_none(join(lay.answers_dir, SUCCESS))
    said: dict[str, dict[str, Any]] = {}
    if answers is not None:
        said = {a["key"]: a for a in fs.read_parquet(lay.answers).to_pylist()}
    c = len(names)
    guess = np.bincount([b["teacher_label"] + 1 for b in batch], minlength=c + 1)[1:]
    rows = []
    for i, n in enumerate(names):
        mine = [b for b in batch if b["teacher_label"] == i]
        given = [said[b["key"]] for b in mine if b["key"] in said and said[b["key"]]["label"] >= 0]
        agree = sum(1 for a in given if a["label"] == i)
        people = sum(1 for a in said.values() if a["label"] == i)
        rows.append(
            [
                n,
                str(int(guess[i])),
                str(people) if answers else "—",
                f"{agree / len(given):.0%} of {len(given)}" if given else "—",
            ]
        )
    per = rc.gallery_per_class
    figs = []
    for i, n in enumerate(names):
        mine = [b for b in batch if b["teacher_label"] == i][:per]
        if not mine:
            continue
        tags = "".join(images.tag(b["shard"], b["key"], _caption(b, said.get(b["key"]), names)) for b in mine)
        figs.append(f"<h4>{html.escape(n)} (teacher's guess)</h4><div class='gallery'>{tags}</div>")
    status = (
        f"answers imported {html.escape(str(answers['imported_at']))} from <code>{html.escape(answers['export'])}"
        f"</code>: {answers['counts']['labelled']} of {len(batch)} faces labelled, "
        f"answers {html.escape(str(answers['counts']['per_answer']))}"
        if answers
        else "<b>waiting for people</b>: import their Label Studio export with <code>fer-engine review import</code>"
    )
    changed = ""
    if fs.exists(lay.reviewed_labelled):  # labelled faces whose label people changed in this round
        lab = [r for r in fs.read_parquet(lay.reviewed_labelled).to_pylist() if r["review_round"] == lay.index]
        moved = [r for r in lab if r["old_label"] >= 0]
        if moved:
            changed = "<h4>Labels people changed (old → new)</h4>" + html_table(
                ["key", "old label", "new label"],
                [[html.escape(r["key"]), names[r["old_label"]], names[r["label"]]] for r in moved],
            )
    return (
        "<section><h2>Review by people</h2>"
        f"<p>Batch <code>{html.escape(marker['extra']['batch'])}</code>: {len(batch)} faces chosen by "
        f"<code>{html.escape(marker['extra']['rule'])}</code> (<code>review/</code> holds the Label Studio project); "
        f"{status}.</p>"
        + html_table(["class", "teacher's guess", "people's label", "people agreed with the teacher"], rows)
        + changed
        + "".join(figs)
        + "</section>"
    )


def _caption(b: dict[str, Any], a: dict[str, Any] | None, names: list[str]) -> str:
    guess = names[b["teacher_label"]] if b["teacher_label"] >= 0 else "?"
    why = f"{html.escape(b['rule'])} {b['score']:.3f}"
    if a is None:
        return f"{why} · teacher {html.escape(guess)}"
    return f"{why} · teacher {html.escape(guess)} → people {html.escape(a['answer'])}"
