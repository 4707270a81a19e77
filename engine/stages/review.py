"""Review stages: a batch of faces for people (``review``) and the labelled set with their answers (``reviewed``).

``review`` (rounds ≥ 1, after threshold) ranks the round's scored pool (or, with ``review.rule=label_issues``, the
labelled rows an earlier round's curation flagged) by ``review.rule`` (engine/review/rules.py) and writes a ready
Label Studio project into ``<round>/review/``: the faces as image files, ``tasks.json`` with the teacher's guess as a
pre-annotation, ``label_config.xml``, ``batch.csv`` for any other tool, ``batch.parquet`` and ``project.json``. The
round then waits: ``fer-engine review import`` commits people's answers into ``<round>/answers/``
(engine/review/answers.py) and the round goes on.

``reviewed`` (any round whose batch, or an earlier round's, has answers) applies every imported answer up to the
round, in round order, to the partition's labelled set: a pool face people labelled joins it, a labelled face people
labelled otherwise changes its label (the old one kept), a face people said is not a face leaves it and the pool.
Select and train of the round read that set (``StageContext.labelled_path``); the partition stays as committed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import ConfigError
from engine.io import fs
from engine.layout import SourceLayout, join, parse_shard, round_name, shard_tar
from engine.review import labelstudio as ls
from engine.review.answers import answers_committed, batch_id, reviewed_keys
from engine.review.rules import LABELLED_RULES, RULE_DOC, choose, order, rank
from engine.schemas import REVIEW_BATCH_SCHEMA, REVIEWED_LABELLED_SCHEMA
from engine.stages.base import RunOutput, Stage, StageContext, committed

log = logging.getLogger(__name__)

CANDIDATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("teacher_label", pa.int16()),
        ("teacher_conf", pa.float32()),
        ("given_label", pa.int16()),
        ("score", pa.float64()),
        ("priority", pa.float64()),
    ]
)
"""The faces a batch is chosen from, with the rule's score and priority (in memory only)."""

EXTRA_FOR_DIVERSITY = 4
"""With a minimum pHash distance, each class keeps this many times B candidates per score part (faces skipped as
near-duplicates are replaced from them)."""


class ReviewStage(Stage):
    """Choose ``review.size`` faces by ``review.rule`` and write them as a Label Studio project."""

    name = "review"
    RAY = False
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.cfg, self.layout, self.names = ctx.cfg.review, ctx.round_layout, list(ctx.space.classes)
        if self.cfg.size <= 0:
            raise ConfigError("review.size is 0: set the number of faces per batch (e.g. --set review.size=500)")
        self.labelled_rule = self.cfg.rule in LABELLED_RULES

    @property
    def out_dir(self) -> str:
        return self.layout.review_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition",) if self.labelled_rule else ("score", "threshold")

    def outputs(self) -> tuple[str, ...]:
        names = ("batch.parquet", "batch.csv", "tasks.json", "label_config.xml", "project.json", "images")
        return tuple(join(self.out_dir, n) for n in names)

    def _curation_dir(self) -> str:
        """The latest earlier round's committed curation (what ``label_issues`` re-checks)."""
        index = self.ctx.round or 0
        for r in range(index - 1, -1, -1):
            lay = self.ctx.campaign.round(r)
            if committed(lay.curation_dir) is not None:
                return lay.curation_dir
        raise ConfigError(
            f"review.rule=label_issues needs label issues from an earlier round than {round_name(index)}; set "
            "curation.label_issues: true (the flags come at the end of each round), or choose another review.rule"
        )

    def fingerprint_inputs(self) -> dict[str, Any]:
        c = self.cfg
        review = {"size": c.size, "rule": c.rule, "per_class_quota": c.per_class_quota}
        review |= {"min_phash_distance": c.min_phash_distance} if c.min_phash_distance else {}
        review |= {"seed": c.seed} if c.rule == "random" else {}
        if self.labelled_rule:
            cur = committed(self._curation_dir())
            assert cur is not None
            upstream = {"partition": self.ctx.fingerprint_of("partition"), "curation": cur.fingerprint}
        else:
            upstream = {"score": self.ctx.fingerprint_of("score"), "threshold": self.ctx.fingerprint_of("threshold")}
        before = answers_committed(self.ctx.campaign, (self.ctx.round or 0) - 1)
        return {"review": review, "classes": self.names, "upstream": upstream, "answered_before": before}

    # -- candidates ---------------------------------------------------------------------------------------------

    def _pool_candidates(self, skip: frozenset[str]) -> pa.Table:
        """The best candidates of the scored pool: per score part, at most M per predicted class by priority (M = B,
        or more with a pHash distance), merged part by part, so the driver holds O(classes · M) rows whatever the
        pool's size."""
        from engine.stages.score import list_shards
        from engine.thresholds.base import thresholds_from_json

        thresholds = np.asarray(
            thresholds_from_json(fs.read_json(self.layout.thresholds)["thresholds"]), dtype=np.float64
        )
        per_class = self.cfg.size * (1 + (EXTRA_FOR_DIVERSITY if self.cfg.min_phash_distance else 0))
        cols = ["key", "shard", "pred", "conf", "margin", "entropy"]
        kept = CANDIDATE_SCHEMA.empty_table()
        asked = pa.array(sorted(skip), pa.string())
        for s in list_shards(self.ctx.root, self.ctx.rule.pool_sources):
            part = self.layout.score_part(s.name)
            if not fs.exists(part):
                continue
            t = fs.read_parquet(part, columns=cols + (["disagreement"] if self.cfg.rule == "disagreement" else []))
            if skip:
                t = t.filter(pc.invert(pc.is_in(t["key"], value_set=asked)))
            r = rank(
                self.cfg.rule,
                t["key"].to_pylist(),
                pred=t["pred"].to_numpy(),
                conf=t["conf"].to_numpy(),
                margin=t["margin"].to_numpy(),
                entropy=t["entropy"].to_numpy(),
                disagreement=t["disagreement"].to_numpy() if "disagreement" in t.column_names else None,
                thresholds=thresholds,
                seed=self.cfg.seed,
            )
            t = pa.table(
                {
                    "key": t["key"],
                    "shard": t["shard"],
                    "teacher_label": pc.cast(t["pred"], pa.int16()),
                    "teacher_conf": pc.cast(t["conf"], pa.float32()),
                    "given_label": pa.array(np.full(t.num_rows, -1, np.int16)),
                    "score": pa.array(r.score),
                    "priority": pa.array(r.priority),
                },
                schema=CANDIDATE_SCHEMA,
            ).filter(pa.array(r.eligible))
            kept = _top_per_class(pa.concat_tables([kept, t]), per_class)
        return kept

    def _labelled_candidates(self, skip: frozenset[str]) -> pa.Table:
        """The labelled rows curation flagged (latest earlier round), without those people already answered."""
        t = fs.read_parquet(join(self._curation_dir(), "label_issues.parquet"))
        t = t.filter(pc.invert(pc.is_in(t["key"], value_set=pa.array(sorted(skip), pa.string()))))
        keys = t["key"].to_pylist()
        r = rank("label_issues", keys, quality=t["quality"].to_numpy(), seed=self.cfg.seed)
        return pa.table(
            {
                "key": t["key"],
                "shard": t["shard"],
                "teacher_label": pc.cast(t["suggested_label"], pa.int16()),
                "teacher_conf": pa.array(np.full(len(keys), np.nan, np.float32)),
                "given_label": pc.cast(t["given_label"], pa.int16()),
                "score": pa.array(r.score),
                "priority": pa.array(r.priority),
            },
            schema=CANDIDATE_SCHEMA,
        )

    def run(self) -> RunOutput:
        index = self.ctx.round or 0
        skip = reviewed_keys(self.ctx.campaign, index)
        cand = self._labelled_candidates(skip) if self.labelled_rule else self._pool_candidates(skip)
        manifest = _manifest_rows(self.ctx.root, cand) if cand.num_rows else {}
        # Never send a face with a val/test twin (pool rows never have one; flagged labelled rows may).
        leak = np.array([manifest[k]["leak_with"] is not None for k in cand["key"].to_pylist()], dtype=bool)
        keys = cand["key"].to_pylist()
        phash = np.array([manifest[k]["phash"] or 0 for k in keys], dtype=np.uint64) if keys else None
        picked = choose(
            cand["priority"].to_numpy(),
            ~leak,
            keys,
            self.cfg.size,
            classes=cand["teacher_label"].to_numpy() if self.cfg.per_class_quota else None,
            num_classes=len(self.names),
            phash=phash,
            min_distance=self.cfg.min_phash_distance,
        )
        batch = cand.take(pa.array(picked, pa.int64()))
        sources = [manifest[k]["source"] for k in batch["key"].to_pylist()]
        bid = batch_id(self.ctx.cfg.campaign.name, index, self.fingerprint())
        images = self._write_images(batch)
        table = pa.table(
            {
                "rank": pa.array(np.arange(batch.num_rows), pa.int32()),
                "key": batch["key"],
                "shard": batch["shard"],
                "source": pa.array(sources, pa.string()),
                "image": pa.array(images, pa.string()),
                "rule": pa.array([self.cfg.rule] * batch.num_rows, pa.string()),
                "score": batch["score"],
                "teacher_label": batch["teacher_label"],
                "teacher_conf": batch["teacher_conf"],
                "given_label": batch["given_label"],
            },
            schema=REVIEW_BATCH_SCHEMA,
        )
        fs.write_parquet(self.layout.review_batch, table)
        self._write_project(table, bid, index)
        per_class = np.bincount(table["teacher_label"].to_numpy().astype(np.int64) + 1, minlength=len(self.names) + 1)
        log.info("%s: %d faces by %s for people: %s", self.label, table.num_rows, self.cfg.rule, self.out_dir)
        return RunOutput(
            counts={"faces": table.num_rows, "candidates": cand.num_rows, "excluded_leak": int(leak.sum())},
            extra={
                "batch": bid,
                "rule": self.cfg.rule,
                "per_class": {n: int(per_class[i + 1]) for i, n in enumerate(self.names)},
            },
        )

    def _write_images(self, batch: pa.Table) -> list[str]:
        """Each face's stored bytes as ``images/<rank>-<hash>.<ext>``; returns the paths relative to the export."""
        from engine.io.tars import read_images

        keys, shards = batch["key"].to_pylist(), batch["shard"].to_pylist()
        wanted: dict[str, set[str]] = {}
        for k, s in zip(keys, shards, strict=True):
            wanted.setdefault(s, set()).add(k)
        data: dict[str, bytes] = {}
        for s, ks in sorted(wanted.items()):
            data.update(read_images(shard_tar(self.ctx.root, s), ks))
        out = []
        for i, k in enumerate(keys):
            if k not in data:
                raise ConfigError(f"face {k!r} has no image in its shard; run `fer-engine verify` on the root")
            rel = f"images/{i:05d}-{hashlib.sha1(k.encode()).hexdigest()[:12]}.{_ext(data[k])}"
            fs.write_bytes(join(self.out_dir, rel), data[k])
            out.append(rel)
        return out

    def _write_project(self, table: pa.Table, bid: str, index: int) -> None:
        names = self.names
        version = f"{round_name(index)} teacher"
        tasks = []
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rank", "key", "image", "rule", "score", "teacher_guess", "teacher_conf", "given_label"])
        for r in table.to_pylist():
            guess = names[r["teacher_label"]] if r["teacher_label"] >= 0 else None
            conf = None if r["teacher_conf"] is None or np.isnan(r["teacher_conf"]) else float(r["teacher_conf"])
            given = names[r["given_label"]] if r["given_label"] >= 0 else ""
            why = f"{r['rule']} {r['score']:.4f}" + (f" · given {given}" if given else "")
            tasks.append(
                ls.task(
                    batch=bid,
                    key=r["key"],
                    image=r["image"],
                    why=why,
                    guess=guess,
                    guess_score=conf,
                    model_version=version,
                )
            )
            w.writerow([r["rank"], r["key"], r["image"], r["rule"], f"{r['score']:.6g}", guess or "", _g(conf), given])
        fs.write_bytes(join(self.out_dir, "batch.csv"), buf.getvalue().encode())
        fs.write_json(join(self.out_dir, "tasks.json"), tasks)
        fs.write_bytes(join(self.out_dir, "label_config.xml"), ls.label_config(names).encode())
        fs.write_json(
            join(self.out_dir, "project.json"),
            {
                "batch": bid,
                "campaign": self.ctx.cfg.campaign.name,
                "round": index,
                "rule": self.cfg.rule,
                "rule_doc": RULE_DOC[self.cfg.rule],
                "faces": table.num_rows,
                "classes": names,
                "choices": [*names, ls.NOT_A_FACE, ls.UNSURE],
                "title": f"{bid}: {table.num_rows} faces by {self.cfg.rule}",
                "label_studio": {
                    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "this folder (the one holding project.json)",
                    "local_storage_path": "<this folder>/images",
                },
            },
        )


def _g(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def _ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _top_per_class(t: pa.Table, m: int) -> pa.Table:
    """At most ``m`` rows per ``teacher_label`` by ``priority`` (ties by key), kept in that order."""
    if t.num_rows == 0:
        return t
    idx = order(t["priority"].to_numpy(), t["key"].to_pylist())
    cls = t["teacher_label"].to_numpy()[idx]
    seen: dict[int, int] = {}
    keep = []
    for i, c in zip(idx, cls, strict=True):
        n = seen.get(int(c), 0)
        if n < m:
            keep.append(int(i))
            seen[int(c)] = n + 1
    return t.take(pa.array(keep, pa.int64()))


def _manifest_rows(root: str, cand: pa.Table) -> dict[str, dict[str, Any]]:
    """key → (source, phash, leak_with) of the candidates, read from the manifest parts of their shards."""
    want: dict[str, set[str]] = {}
    for k, s in zip(cand["key"].to_pylist(), cand["shard"].to_pylist(), strict=True):
        want.setdefault(s, set()).add(k)
    out: dict[str, dict[str, Any]] = {}
    for shard, keys in want.items():
        source, i = parse_shard(shard)
        m = fs.read_parquet(
            SourceLayout(root, source).manifest_part(i), columns=["key", "source", "phash", "leak_with"]
        )
        m = m.filter(pc.is_in(m["key"], value_set=pa.array(sorted(keys))))
        out.update({r["key"]: r for r in m.to_pylist()})
    missing = {k for ks in want.values() for k in ks} - set(out)
    if missing:
        raise ConfigError(f"{len(missing)} candidate face(s) are not in their manifest (e.g. {sorted(missing)[0]!r})")
    return out


class ReviewedStage(Stage):
    """The round's labelled set: the partition's, with every answer imported up to this round applied."""

    name = "reviewed"
    RAY = False
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.layout, self.names = ctx.round_layout, list(ctx.space.classes)

    @property
    def out_dir(self) -> str:
        return self.layout.reviewed_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition",)

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.reviewed_labelled, self.layout.reviewed_removed)

    def fingerprint_inputs(self) -> dict[str, Any]:
        answers = answers_committed(self.ctx.campaign, self.ctx.round or 0)
        return {"partition": self.ctx.fingerprint_of("partition"), "answers": {str(r): f for r, f in answers.items()}}

    def run(self) -> RunOutput:
        lab = fs.read_parquet(self.ctx.campaign.labelled, columns=["key", "shard", "source", "label"])
        rows: dict[str, dict[str, Any]] = {
            r["key"]: {**r, "origin": "labelled", "old_label": -1, "review_round": -1} for r in lab.to_pylist()
        }
        removed: dict[str, dict[str, Any]] = {}
        added = relabelled = confirmed = 0
        for r in sorted(answers_committed(self.ctx.campaign, self.ctx.round or 0)):
            for a in fs.read_parquet(self.ctx.campaign.round(r).answers).to_pylist():
                key, cur = a["key"], rows.get(a["key"])
                if a["answer"] == ls.NOT_A_FACE:
                    rows.pop(key, None)
                    removed[key] = {"key": key, "shard": a["shard"], "review_round": r}
                elif a["label"] >= 0 and cur is None:
                    rows[key] = {
                        "key": key,
                        "shard": a["shard"],
                        "source": a["source"],
                        "label": a["label"],
                        "origin": "reviewed",
                        "old_label": -1,
                        "review_round": r,
                    }
                    removed.pop(key, None)
                    added += 1
                elif a["label"] >= 0 and cur is not None and a["label"] != cur["label"]:
                    old = cur["old_label"] if cur["old_label"] >= 0 else cur["label"]
                    rows[key] = {**cur, "label": a["label"], "old_label": old, "review_round": r}
                    relabelled += 1
                elif a["label"] >= 0:
                    confirmed += 1
        table = pa.Table.from_pylist(sorted(rows.values(), key=lambda x: x["key"]), schema=REVIEWED_LABELLED_SCHEMA)
        fs.write_parquet(self.layout.reviewed_labelled, table)
        gone = pa.Table.from_pylist(
            sorted(removed.values(), key=lambda x: x["key"]),
            schema=pa.schema([("key", pa.string()), ("shard", pa.string()), ("review_round", pa.int16())]),
        )
        fs.write_parquet(self.layout.reviewed_removed, gone)
        per_class = np.bincount(table["label"].to_numpy().astype(np.int64), minlength=len(self.names))
        return RunOutput(
            counts={
                "labelled": table.num_rows,
                "added": added,
                "relabelled": relabelled,
                "confirmed": confirmed,
                "removed": gone.num_rows,
            },
            extra={"labelled_per_class": {n: int(per_class[i]) for i, n in enumerate(self.names)}},
        )
