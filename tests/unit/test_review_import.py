"""Importing people's answers (engine/review/labelstudio.py, engine/review/answers.py): majority, tie, unsure,
cancelled, unanswered, not a face; the refused exports (another project, a task never sent, an unknown choice, a
batch imported twice) leave nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from engine.config import load_config
from engine.errors import ReviewImportError
from engine.io import fs
from engine.layout import SUCCESS, CampaignLayout, join
from engine.review import labelstudio as ls
from engine.review.answers import import_answers
from engine.schemas import REVIEW_BATCH_SCHEMA

NAMES = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]  # basic7
BATCH = "c-r001-0123456789ab"


def ann(choice: str | None, who: int = 1, *, cancelled: bool = False, at: str = "2026-12-07T10:00:00Z") -> dict:
    result = (
        []
        if choice is None
        else [{"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
    )
    return {"completed_by": who, "result": result, "was_cancelled": cancelled, "created_at": at, "lead_time": 2.5}


def task(key: str, *annotations: dict, batch: str = BATCH, tid: int = 1) -> dict:
    return {
        "id": tid,
        "data": {"image": f"/data/local-files/?d=images/{key}.png", "key": key, "batch": batch},
        "annotations": list(annotations),
    }


def answers(*tasks: dict, keys: set[str] | None = None) -> dict[str, ls.Answer]:
    keys = keys if keys is not None else {t["data"]["key"] for t in tasks}
    return {a.key: a for a in ls.answers(list(tasks), batch=BATCH, keys=keys, class_names=NAMES)}


def test_majority_of_submitted_annotations() -> None:
    a = answers(task("k1", ann("Fear", 1), ann("Fear", 2), ann("Sadness", 3)))["k1"]
    assert (a.answer, a.votes, a.annotators, a.submitted) == ("Fear", {"Fear": 2, "Sadness": 1}, ("1", "2", "3"), 3)
    assert a.lead_time_s == 7.5


def test_tie_unsure_cancelled_and_unanswered_give_no_label() -> None:
    got = answers(
        task("tie", ann("Fear", 1), ann("Sadness", 2)),
        task("unsure", ann("unsure", 1), ann("unsure", 2), ann("Fear", 3)),
        task("skipped", ann(None, 1, cancelled=True)),
        task("nobody"),
        task("cancel-ignored", ann("Anger", 1, cancelled=True), ann("Happiness", 2)),
        task("empty", ann(None, 1)),
    )
    assert {k: a.answer for k, a in got.items()} == {
        "tie": ls.TIE,
        "unsure": ls.UNSURE,
        "skipped": ls.SKIPPED,
        "nobody": ls.UNANSWERED,
        "cancel-ignored": "Happiness",
        "empty": ls.UNSURE,
    }
    assert got["skipped"].cancelled == 1 and got["cancel-ignored"].cancelled == 1


def test_annotator_ids_and_times_are_kept() -> None:
    a = answers(
        task(
            "k",
            ann("Anger", {"id": 7, "email": "p@x"}, at="2026-12-07T11:00:00Z"),
            ann("Anger", 8, at="2026-12-07T10:00:00Z"),
        )
    )["k"]
    assert a.annotators == ("8", "p@x")
    assert (a.first_at, a.last_at) == ("2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z")


@pytest.mark.parametrize(
    ("tasks", "keys", "match"),
    [
        ([task("k", ann("Fear"), batch="other-r001-ffffffffffff")], {"k"}, "another project"),
        ([task("stranger", ann("Fear"))], {"k"}, "never sent"),
        ([task("k", ann("Angry"))], {"k"}, "'Angry', which is not a choice"),
        ([task("k", ann("Fear"), tid=1), task("k", ann("Fear"), tid=2)], {"k"}, "appears in two tasks"),
    ],
)
def test_bad_exports_are_refused_in_one_line(tasks: list[dict], keys: set[str], match: str) -> None:
    with pytest.raises(ReviewImportError, match=match) as exc:
        ls.answers(tasks, batch=BATCH, keys=keys, class_names=NAMES)
    assert "\n" not in str(exc.value)


def test_label_config_offers_every_class_then_not_a_face_and_unsure() -> None:
    xml = ls.label_config(NAMES)
    values = [p.split('"')[1] for p in xml.split("<Choice value=")[1:]]
    assert values == [*NAMES, "not a face", "unsure"]


# -- import_answers on a committed batch ----------------------------------------------------------------------------


@pytest.fixture
def batch_root(tmp_path: Path) -> tuple[Any, CampaignLayout]:
    cfg = load_config(
        overrides=[
            f"storage.root={tmp_path}",
            "campaign.name=c",
            "campaign.labelled=[lab]",
            "sources.lab.format=image_folder",
            f"sources.lab.path={tmp_path}",
        ]
    )
    lay = CampaignLayout(str(tmp_path), "c")
    r1 = lay.round(1)
    rows = [
        ("pool1", "src-000000", "src", 4, -1),  # teacher says Happiness, a pool face
        ("pool2", "src-000000", "src", 3, -1),
        ("lab1", "lab-000000", "lab", 2, 1),  # a labelled face given Anger, curation suggested Disgust
    ]
    batch = pa.table(
        {
            "rank": pa.array(range(3), pa.int32()),
            "key": [r[0] for r in rows],
            "shard": [r[1] for r in rows],
            "source": [r[2] for r in rows],
            "image": [f"images/{r[0]}.png" for r in rows],
            "rule": ["margin"] * 3,
            "score": [0.1, 0.2, 0.3],
            "teacher_label": pa.array([r[3] for r in rows], pa.int16()),
            "teacher_conf": pa.array([0.5, 0.4, float("nan")], pa.float32()),
            "given_label": pa.array([r[4] for r in rows], pa.int16()),
        },
        schema=REVIEW_BATCH_SCHEMA,
    )
    fs.write_parquet(r1.review_batch, batch)
    fs.write_json(
        join(r1.review_dir, SUCCESS), {"fingerprint": "f", "counts": {"faces": 3}, "extra": {"batch": BATCH}}
    )
    return cfg, lay


def write_export(path: Path, tasks: list[dict]) -> str:
    path.write_text(json.dumps(tasks))
    return str(path)


def test_import_commits_labels_counts_and_provenance(batch_root: tuple[Any, CampaignLayout], tmp_path: Path) -> None:
    cfg, lay = batch_root
    export = write_export(
        tmp_path / "export.json",
        [
            task("pool1", ann("Happiness", 1), ann("Happiness", 2)),
            task("pool2", ann("not a face", 1)),
            task("lab1", ann("Disgust", 2)),
        ],
    )
    c = import_answers(cfg, export)
    assert {k: c[k] for k in ("faces", "labelled", "agree_with_teacher", "relabelled", "round", "batch")} == {
        "faces": 3,
        "labelled": 2,
        "agree_with_teacher": 2,
        "relabelled": 1,
        "round": 1,
        "batch": BATCH,
    }
    assert c["per_answer"] == {"Disgust": 1, "Happiness": 1, "not a face": 1}
    t = fs.read_parquet(lay.round(1).answers).to_pylist()
    assert [(r["key"], r["label"], r["answer"], r["given_label"], r["annotators"]) for r in t] == [
        ("pool1", 4, "Happiness", -1, ["1", "2"]),
        ("pool2", -1, "not a face", -1, ["1"]),
        ("lab1", 2, "Disgust", 1, ["2"]),
    ]
    assert {r["batch"] for r in t} == {BATCH} and {r["round"] for r in t} == {1}
    assert json.loads(t[0]["votes"]) == {"Happiness": 2}
    marker = fs.read_json(join(lay.round(1).answers_dir, SUCCESS))
    assert marker["export"] == "export.json" and set(marker["files"]) == {"answers.parquet", "export.json"}


def test_a_task_missing_from_the_export_is_unanswered(batch_root: tuple[Any, CampaignLayout], tmp_path: Path) -> None:
    cfg, lay = batch_root
    import_answers(cfg, write_export(tmp_path / "e.json", [task("pool1", ann("Fear"))]))
    t = fs.read_parquet(lay.round(1).answers)
    assert t["answer"].to_pylist() == ["Fear", "unanswered", "unanswered"]


def test_second_import_is_refused_and_changes_nothing(batch_root: tuple[Any, CampaignLayout], tmp_path: Path) -> None:
    cfg, lay = batch_root
    first = write_export(tmp_path / "a.json", [task("pool1", ann("Fear"))])
    import_answers(cfg, first)
    before = fs.read_bytes(lay.round(1).answers)
    other = write_export(tmp_path / "b.json", [task("pool1", ann("Anger"))])
    with pytest.raises(ReviewImportError, match=r"already imported .* from a.json \(other answers\).*--replace"):
        import_answers(cfg, other)
    assert fs.read_bytes(lay.round(1).answers) == before
    import_answers(cfg, other, replace=True)
    assert fs.read_parquet(lay.round(1).answers)["answer"][0].as_py() == "Anger"


def test_refused_export_writes_nothing(batch_root: tuple[Any, CampaignLayout], tmp_path: Path) -> None:
    cfg, lay = batch_root
    bad = write_export(tmp_path / "bad.json", [task("pool1", ann("Fear")), task("pool2", ann("Joy"))])
    with pytest.raises(ReviewImportError, match="'Joy', which is not a choice"):
        import_answers(cfg, bad)
    assert not fs.exists(lay.round(1).answers_dir)
    other = write_export(tmp_path / "o.json", [task("pool1", ann("Fear"), batch="c-r002-aaaaaaaaaaaa")])
    with pytest.raises(ReviewImportError, match="no review batch of campaign c has id c-r002-aaaaaaaaaaaa"):
        import_answers(cfg, other)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ReviewImportError, match="is not JSON"):
        import_answers(cfg, str(tmp_path / "x.json"))
    assert not fs.exists(lay.round(1).answers_dir)
