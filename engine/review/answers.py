"""Import people's answers to a review batch (``fer-engine review import``): a Label Studio JSON export in, a
committed ``<round>/answers/`` out (docs/review.md).

Everything is checked before anything is written (engine.review.labelstudio.answers): an export of another project,
a task the batch never sent, a choice the labeling config does not have, or a batch already imported end in one line
naming what to do, and the answers folder is left as it was. The folder is written like a stage's: the answers, a copy
of the export, then ``_SUCCESS.json`` last with every file's sha256; a crash before it leaves the batch waiting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import Config
from engine.errors import ReviewImportError
from engine.fingerprint import fingerprint
from engine.io import fs
from engine.io.checksums import digest_dir
from engine.labels import campaign_space
from engine.layout import SUCCESS, CampaignLayout, RoundLayout, join, round_name
from engine.review import labelstudio as ls
from engine.schemas import ANSWERS_SCHEMA

log = logging.getLogger(__name__)


def import_answers(cfg: Config, export_path: str, *, replace: bool = False) -> dict[str, Any]:
    """Commit the answers of the Label Studio export ``export_path`` to the batch whose id its tasks carry; returns
    the counts (faces, labelled, per answer, agreement with the teacher)."""
    t0 = time.perf_counter()
    text = fs.read_bytes(export_path).decode("utf-8", errors="replace")
    tasks = ls.read_export(text, export_path)
    if not tasks:
        raise ReviewImportError(f"{export_path} holds no task; export the project after people have labelled it")
    ids = sorted({str(t["data"].get("batch")) for t in tasks})
    campaign = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    lay = project_of(campaign, ids[0])
    batch = fs.read_parquet(lay.review_batch)
    bid = str(fs.read_json(join(lay.review_dir, SUCCESS))["extra"]["batch"])
    names = list(campaign_space(cfg).classes)
    found = ls.answers(tasks, batch=bid, keys=set(batch["key"].to_pylist()), class_names=names)
    table = answers_table(found, batch, names, round_index=lay.index, batch_id=bid)
    fp = fingerprint("answers", bid, table.to_pylist())
    done = fs.read_json_or_none(join(lay.answers_dir, SUCCESS))
    if done is not None and not replace:
        same = "the same answers" if done["fingerprint"] == fp else "other answers"
        raise ReviewImportError(
            f"batch {bid} ({round_name(lay.index)}) was already imported on {done['imported_at']} from "
            f"{done['export']} ({same}); nothing was changed. To replace its answers, add --replace"
        )
    counts = answer_counts(table, names)
    fs.remove(lay.answers_dir)  # a crashed import left no _SUCCESS.json: start again
    fs.write_parquet(lay.answers, table)
    fs.write_bytes(join(lay.answers_dir, "export.json"), text.encode())
    fs.write_json(
        join(lay.answers_dir, SUCCESS),
        {
            "stage": "answers",
            "fingerprint": fp,
            "batch": bid,
            "round": lay.index,
            "export": export_path.rsplit("/", 1)[-1],
            "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "counts": counts,
            "seconds": round(time.perf_counter() - t0, 3),
            "files": digest_dir(lay.answers_dir),
        },
    )
    log.info("review %s: answers of %d faces imported (%d labelled)", bid, table.num_rows, counts["labelled"])
    return {"batch": bid, "round": lay.index, "dir": lay.answers_dir, **counts}


def answers_table(
    found: list[ls.Answer], batch: pa.Table, names: list[str], *, round_index: int, batch_id: str
) -> pa.Table:
    """One ``ANSWERS_SCHEMA`` row per face of the batch (in batch order); a face without a task in the export is
    ``unanswered``."""
    by_key = {a.key: a for a in found}
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for b in batch.to_pylist():
        a = by_key.get(b["key"]) or ls.Answer(b["key"], ls.UNANSWERED)
        rows.append(
            {
                "key": b["key"],
                "shard": b["shard"],
                "source": b["source"],
                "label": index.get(a.answer, -1),
                "answer": a.answer,
                "given_label": b["given_label"],
                "teacher_label": b["teacher_label"],
                "votes": json.dumps(a.votes, sort_keys=True),
                "annotators": list(a.annotators),
                "submitted": a.submitted,
                "cancelled": a.cancelled,
                "first_at": a.first_at,
                "last_at": a.last_at,
                "lead_time_s": a.lead_time_s,
                "round": round_index,
                "rule": b["rule"],
                "score": b["score"],
                "batch": batch_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA)


def answer_counts(table: pa.Table, names: list[str]) -> dict[str, Any]:
    """Faces, labelled, per answer, per class, and how often people agreed with the teacher's guess (among the faces
    people gave a class)."""
    label = table["label"].to_numpy().astype(np.int64)
    teacher = table["teacher_label"].to_numpy().astype(np.int64)
    given = table["given_label"].to_numpy().astype(np.int64)
    has = label >= 0
    agree = int((label[has] == teacher[has]).sum())
    relabel = has & (given >= 0) & (label != given)
    per_class = np.bincount(label[has], minlength=len(names))
    return {
        "faces": table.num_rows,
        "labelled": int(has.sum()),
        "agree_with_teacher": agree,
        "agreement": round(agree / int(has.sum()), 4) if has.any() else None,
        "relabelled": int(relabel.sum()),
        "per_answer": dict(sorted(Counter(table["answer"].to_pylist()).items())),
        "per_class": {n: int(per_class[i]) for i, n in enumerate(names)},
    }


def answers_committed(campaign: CampaignLayout, upto: int) -> dict[int, str]:
    """Round → fingerprint of the answers committed for rounds 1..``upto`` (``<round>/answers/_SUCCESS.json``)."""
    out = {}
    for r in range(1, upto + 1):
        marker = fs.read_json_or_none(join(campaign.round(r).answers_dir, SUCCESS))
        if marker is not None:
            out[r] = str(marker["fingerprint"])
    return out


def reviewed_keys(campaign: CampaignLayout, before: int) -> frozenset[str]:
    """Every key an imported batch of a round before ``before`` asked about (people are not asked twice)."""
    keys: set[str] = set()
    for r in answers_committed(campaign, before - 1):
        keys.update(fs.read_parquet(campaign.round(r).answers, columns=["key"])["key"].to_pylist())
    return frozenset(keys)


def batch_id(campaign: str, index: int, fingerprint: str) -> str:
    """``<campaign>-r001-<12 hex>``: the id every task of a batch carries (an import checks it)."""
    return f"{campaign}-{round_name(index)}-{fingerprint[:12]}"


def waiting(lay: RoundLayout) -> bool:
    """Whether the round has a committed review batch whose answers are not imported yet."""
    return fs.exists(join(lay.review_dir, SUCCESS)) and not fs.exists(join(lay.answers_dir, SUCCESS))


def removed_keys(lay: RoundLayout) -> frozenset[str]:
    """Keys people said are not a face, up to this round (empty without a ``reviewed`` stage)."""
    if not fs.exists(lay.reviewed_removed):
        return frozenset()
    return frozenset(fs.read_parquet(lay.reviewed_removed, columns=["key"])["key"].to_pylist())


def project_of(campaign: CampaignLayout, batch: str) -> RoundLayout:
    """The round whose committed review batch has id ``batch`` (the id every task of an export carries)."""
    ids = []
    for name in fs.subdirs(join(campaign.dir, "rounds")):
        lay = campaign.round(int(name[1:]))
        marker = fs.read_json_or_none(join(lay.review_dir, SUCCESS))
        if marker is not None:
            ids.append(marker.get("extra", {}).get("batch"))
            if ids[-1] == batch:
                return lay
    raise ReviewImportError(
        f"no review batch of campaign {campaign.campaign} has id {batch} (its batches: "
        f"{', '.join(map(str, ids)) or 'none'}): this export is of another project or another campaign; check "
        "--config and the file"
    )


def discard_batch(cfg: Config, index: int | None) -> str:
    """Drop round ``index``'s review batch when nobody's answers were imported for it; returns what was done."""
    if index is None:
        raise ReviewImportError("review discard needs the round: --round N")
    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name).round(index)
    if fs.exists(join(lay.answers_dir, SUCCESS)):
        raise ReviewImportError(
            f"round {round_name(index)}'s batch has imported answers; they are part of the campaign's labelled set "
            "now. Start a new campaign (campaign.name) to go without them"
        )
    if not fs.exists(lay.review_dir):
        raise ReviewImportError(f"round {round_name(index)} has no review batch ({lay.review_dir} is absent)")
    fs.remove(lay.review_dir)
    return f"discarded round {round_name(index)}'s review batch; a campaign run goes on without asking people"
