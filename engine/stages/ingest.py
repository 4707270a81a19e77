"""Ingest stage: a source in its native format → WebDataset shards, manifest, quarantine, dedup and leakage flags.

Four phases, each resumable on its own:

1. **list** (driver, streaming): the adapter's rows are written to ``_work/listing/part-*.parquet`` in chunks.
2. **decode** (Ray Data, one task per listing part): read bytes, validate, crop/resize, re-encode, sha256 of the
   stored pixels and a 64-bit perceptual hash → ``_work/decoded/part-*.parquet``; a part that exists is done.
3. **dedup** (Ray Data ``groupby``): exact twins (same sha256) inside one role (train ∪ unlabelled, val, test) are
   quarantined as ``duplicate`` of the first listed one; twins across roles (sha256 or phash equal) are kept and
   flagged with ``leak_with`` (the other splits). Only these exceptions reach the driver.
4. **shard** (Ray Data, one task per shard): kept rows in listing order are cut into shards of exactly
   ``samples_per_shard``; each task writes ``<source>-NNNNNN.tar`` then its manifest part (the shard's done marker).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import Config, IngestConfig, SourceConfig
from engine.errors import EngineError, SourceRecordError
from engine.imaging import process_image
from engine.io import fs
from engine.io.tars import tar_bytes
from engine.layout import SourceLayout, shard_name
from engine.progress import track
from engine.runtime import local_work, map_items, ray_started, retry_lost_nodes
from engine.schemas import LISTING_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA
from engine.stages.base import RunOutput, Stage, StageContext, StageResult

log = logging.getLogger(__name__)

ROLE = {"train": "fit", "unlabelled": "fit", "val": "val", "test": "test"}
SPLIT_ORDER = {"train": 0, "unlabelled": 1, "val": 2, "test": 3}

_META_COLS = ["key", "orig_path", "split", "label", "group", "frame", "valence", "arousal"]
_FACE_KEYS = ("detect_faces", "face_margin", "face_size", "face_min_prob", "face_align")


class IngestStage(Stage):
    """Ingest one source into ``<root>/sources/<name>/`` (see the module docstring)."""

    name = "ingest"
    VERSION = 1
    RAY = False  # a small source runs in this process; a larger one starts Ray in its first phase (ray_started)

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        if ctx.source is None:
            raise EngineError("the ingest stage needs a context naming its source")
        self.source: SourceConfig = ctx.cfg.source(ctx.source)
        self.cfg: IngestConfig = ctx.cfg.ingest
        self.layout = SourceLayout(ctx.root, self.source.name)

    @property
    def out_dir(self) -> str:
        return self.layout.dir

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.shards_dir, self.layout.manifest_dir, self.layout.quarantine, self.layout.duplicates)

    def resources(self) -> dict[str, float]:
        return {"CPU": 1.0}  # per decode / shard task

    def fingerprint_inputs(self) -> dict[str, Any]:
        ingest = asdict(self.cfg)
        del ingest["in_process_rows"]  # where the work runs, not what it writes
        if not self.cfg.detect_faces:  # face keys unused: ingests from before face detection existed stay valid
            for k in _FACE_KEYS:
                del ingest[k]
        source = asdict(self.source)
        if not source["follow_outside"]:  # off is the default: ingests from before the key existed stay valid
            del source["follow_outside"]
        return {"source": source, "ingest": ingest}

    def run(self) -> RunOutput:
        if self.cfg.detect_faces:
            from engine.faces import require_detector

            require_detector()  # fail on the driver, before any Ray task
        t0 = time.perf_counter()
        n_parts = self._list()
        label = f"ingest {self.source.name}"
        rows = sum(fs.read_parquet(self.layout.listing_part(i), columns=["key"]).num_rows for i in range(n_parts))
        here = local_work() and rows <= self.cfg.in_process_rows
        if here:
            log.info("%s: %d rows: in this process (ingest.in_process_rows=%d)", label, rows, self.cfg.in_process_rows)
        # The Ray phases are idempotent (decode and shard skip the parts they committed; dedup writes nothing), so a
        # lost node, worker or actor that Ray itself does not recover (e.g. Ray Data's parquet footer readers) only
        # re-runs the phase.
        part_stats = retry_lost_nodes(label, lambda: self._decode(n_parts, here))
        decisions = retry_lost_nodes(label, lambda: self._dedup(n_parts, here))
        shards = retry_lost_nodes(label, lambda: self._shard(part_stats, decisions, here))
        counts = self._finish(n_parts, decisions, shards)
        seconds = time.perf_counter() - t0
        counts["seconds"] = round(seconds, 2)
        counts["images_per_s"] = round(counts["inputs"] / max(seconds, 1e-9), 1)
        fs.remove(self.layout.work_dir)
        return RunOutput(counts=counts, extra={"shards": shards, "samples_per_shard": self.cfg.samples_per_shard})

    # ------------------------------------------------------------------ phase 1: list
    def _list(self) -> int:
        done = fs.read_json_or_none(f"{self.layout.work_dir}/listing/_DONE.json")
        if done is not None:
            return int(done["parts"])
        from engine.sources import get_adapter

        adapter = get_adapter(self.source)
        n_parts = 0
        for n_parts, chunk in enumerate(_chunks(adapter.rows(), self.cfg.list_chunk_rows), start=1):
            fs.write_parquet(self.layout.listing_part(n_parts - 1), _listing_table(chunk))
        fs.write_json(f"{self.layout.work_dir}/listing/_DONE.json", {"parts": n_parts})
        log.info("ingest %s: listed %d parts", self.source.name, n_parts)
        return n_parts

    # ------------------------------------------------------------------ phase 2: decode
    def _decode(self, n_parts: int, here: bool) -> dict[int, dict[str, int]]:
        pending = [i for i in range(n_parts) if not fs.exists(self.layout.decoded_part(i))]
        if pending:
            log.info("ingest %s: decoding %d/%d parts", self.source.name, len(pending), n_parts)
            kwargs: dict[str, Any] = {"layout": self.layout, "policy": self.cfg}
            items = [{"part": i} for i in pending]
            rows = map_items(_decode_part_row, items, kwargs, here=here)
            list(track(rows, desc=f"ingest {self.source.name}: decode", total=len(pending), unit="parts"))
        stats: dict[int, dict[str, int]] = {}
        for i in range(n_parts):
            t = fs.read_parquet(self.layout.decoded_part(i), columns=["status"])
            ok = int(pc.sum(pc.equal(t["status"], "ok")).as_py() or 0)
            stats[i] = {"rows": t.num_rows, "ok": ok}
        return stats

    # ------------------------------------------------------------------ phase 3: dedup + leakage
    def _dedup(self, n_parts: int, here: bool) -> pa.Table:
        from engine.runtime import task_shuffle

        paths = [self.layout.decoded_part(i) for i in range(n_parts)]
        cols = ["key", "orig_path", "part", "row", "split", "status", "sha256", "phash"]
        if here:
            t = pa.concat_tables([fs.read_parquet(p, columns=cols) for p in paths])
            t = t.filter(pc.equal(t["status"], "ok"))
            exact = [r for g in _twin_groups(t, "sha256") for r in _exact_group(g).to_pylist()]
            near = (
                [r for g in _twin_groups(t, "phash") for r in _near_group(g).to_pylist()]
                if self.cfg.phash_leakage
                else []
            )
            return _merge_decisions(exact, near)
        ray = ray_started()
        parts = max(2, min(64, n_parts))
        with task_shuffle():
            ds = ray.data.read_parquet(paths).select_columns(cols).filter(expr=_col("status") == "ok")
            exact = ds.groupby("sha256", num_partitions=parts).map_groups(_exact_group, batch_format="pyarrow")
            near = ds.groupby("phash", num_partitions=parts).map_groups(_near_group, batch_format="pyarrow")
            return _merge_decisions(exact.take_all(), near.take_all() if self.cfg.phash_leakage else [])

    # ------------------------------------------------------------------ phase 4: shards + manifest
    def _shard(self, part_stats: dict[int, dict[str, int]], decisions: pa.Table, here: bool) -> int:
        dup_parts = pc.value_counts(decisions.filter(pc.is_valid(decisions["duplicate_of"]))["part"]).to_pylist()
        dups_in = {int(d["values"]): int(d["counts"]) for d in dup_parts}
        kept_per_part = [part_stats[i]["ok"] - dups_in.get(i, 0) for i in range(len(part_stats))]
        offsets = np.concatenate([[0], np.cumsum(kept_per_part)]).astype(np.int64)
        total, n = int(offsets[-1]), self.cfg.samples_per_shard
        n_shards = (total + n - 1) // n
        fs.write_parquet(f"{self.layout.work_dir}/decisions.parquet", decisions)
        pending = [s for s in range(n_shards) if not fs.exists(self.layout.manifest_part(s))]
        if pending:
            log.info("ingest %s: writing %d/%d shards", self.source.name, len(pending), n_shards)
            jobs = []
            for s in pending:
                lo, hi = s * n, min((s + 1) * n, total)
                parts = [i for i in range(len(kept_per_part)) if offsets[i] < hi and offsets[i + 1] > lo]
                jobs.append(
                    {"shard": s, "lo": lo, "hi": hi, "parts": parts, "offsets": [int(offsets[i]) for i in parts]}
                )
            kwargs: dict[str, Any] = {"layout": self.layout, "source": self.source.name}
            rows = map_items(_write_shard_row, jobs, kwargs, here=here)
            list(track(rows, desc=f"ingest {self.source.name}: write shards", total=len(jobs), unit="shards"))
        return n_shards

    # ------------------------------------------------------------------ commit: quarantine + counts
    def _finish(self, n_parts: int, decisions: pa.Table, n_shards: int) -> dict[str, Any]:
        rejected = []
        for i in range(n_parts):
            t = fs.read_parquet(self.layout.decoded_part(i), columns=["key", "orig_path", "split", "status", "detail"])
            rejected.append(t.filter(pc.not_equal(t["status"], "ok")))
        rej = (
            pa.concat_tables(rejected)
            if rejected
            else pa.table({c: [] for c in ("key", "orig_path", "split", "status", "detail")})
        )
        dups = decisions.filter(pc.is_valid(decisions["duplicate_of"]))
        quarantine = pa.table(
            {
                "key": pa.concat_arrays([rej["key"].combine_chunks(), dups["key"].combine_chunks()]),
                "source": [self.source.name] * (rej.num_rows + dups.num_rows),
                "orig_path": pa.concat_arrays([rej["orig_path"].combine_chunks(), dups["orig_path"].combine_chunks()]),
                "split": pa.concat_arrays([rej["split"].combine_chunks(), dups["split"].combine_chunks()]),
                "reason": pa.concat_arrays(
                    [rej["status"].combine_chunks(), pa.array(["duplicate"] * dups.num_rows, pa.string())]
                ),
                "detail": pa.concat_arrays(
                    [
                        rej["detail"].combine_chunks(),
                        pc.binary_join_element_wise("duplicate of ", dups["duplicate_of"], "").combine_chunks(),
                    ]
                ),
                "duplicate_of": pa.concat_arrays(
                    [pa.nulls(rej.num_rows, pa.string()), dups["duplicate_of"].combine_chunks()]
                ),
            },
            schema=QUARANTINE_SCHEMA,
        ).sort_by("key")
        fs.write_parquet(self.layout.quarantine, quarantine)
        fs.write_parquet(self.layout.duplicates, decisions.drop_columns(["part", "row"]).sort_by("key"))

        inputs = sum(fs.read_parquet(self.layout.decoded_part(i), columns=["key"]).num_rows for i in range(n_parts))
        by_reason = dict(sorted(_value_counts(quarantine["reason"]).items()))
        # Manifest counts part by part: the driver never holds a column of the whole source.
        by_split: dict[str, int] = {}
        kept = leakage = eval_twins = 0
        for i in range(n_shards):
            m = fs.read_parquet(self.layout.manifest_part(i), columns=["split", "leak_with"])
            kept += m.num_rows
            for k, v in _value_counts(m["split"]).items():
                by_split[k] = by_split.get(k, 0) + v
            leaky = m.filter(pc.is_valid(m["leak_with"]))
            leakage += leaky.num_rows
            is_eval = pc.is_in(leaky["split"], pa.array(["val", "test"]))
            has_fit = pc.match_substring_regex(leaky["leak_with"], "train|unlabelled")
            eval_twins += int(pc.sum(pc.and_(is_eval, has_fit)).as_py() or 0)
        if kept + quarantine.num_rows != inputs:
            raise RuntimeError(
                f"ingest {self.source.name}: kept {kept} + quarantined {quarantine.num_rows} != {inputs}"
            )
        return {
            "inputs": inputs,
            "kept": kept,
            "quarantined": quarantine.num_rows,
            "duplicates": by_reason.get("duplicate", 0),
            "leakage": leakage,
            "eval_twins_of_train": eval_twins,
            "shards": n_shards,
            "by_reason": by_reason,
            "by_split": dict(sorted(by_split.items())),
        }


# ---------------------------------------------------------------------- helpers (run in Ray tasks)


def _col(name: str) -> Any:
    from ray.data.expressions import col

    return col(name)


def _decode_part_row(row: dict[str, Any], *, layout: SourceLayout, policy: IngestConfig) -> dict[str, Any]:
    decode_part(layout, int(row["part"]), policy)
    return {"part": int(row["part"])}


class _Rejected(Exception):
    """A listed row the listing refused (``SourceRow.reject``)."""


def decode_part(layout: SourceLayout, part: int, policy: IngestConfig) -> None:
    """Decode, validate and hash every row of one listing part; writes its decoded part atomically."""
    from engine.sources.base import NotAFile, read_bytes

    listing = fs.read_parquet(layout.listing_part(part)).to_pylist()
    out: dict[str, list[Any]] = {
        c: []
        for c in [*_META_COLS, "part", "row", "status", "detail", "sha256", "phash", "width", "height", "ext", "data"]
    }
    for i, r in enumerate(listing):
        try:
            if r.get("reject"):  # refused by the listing (e.g. outside_root): never read
                raise _Rejected(r["reject"])
            data = read_bytes(r["locator"])
        except _Rejected as exc:
            check = None
            reason, _, detail = str(exc).partition(": ")
            status, detail = reason, detail[:200]
        except NotAFile as exc:
            check = None
            status, detail = "not_a_file", str(exc)[:200]
        except SourceRecordError as exc:  # a malformed record of a pixel CSV: this row only
            check = None
            status, detail = "bad_record", str(exc)[:200]
        except OSError as exc:
            check = None
            status, detail = "unreadable", f"{type(exc).__name__}: {exc}"[:200]
        else:
            check = process_image(data, policy, tuple(r["box"]) if r["box"] else None)
            status, detail = check.reason or "ok", check.detail
        for c in _META_COLS:
            out[c].append(r[c])
        out["part"].append(part)
        out["row"].append(i)
        out["status"].append(status)
        out["detail"].append(detail)
        ok = check is not None and check.reason is None
        out["sha256"].append(check.sha256 if ok else None)  # type: ignore[union-attr]
        out["phash"].append(check.phash if ok else None)  # type: ignore[union-attr]
        out["width"].append(check.width if ok else None)  # type: ignore[union-attr]
        out["height"].append(check.height if ok else None)  # type: ignore[union-attr]
        out["ext"].append(check.ext if ok else None)  # type: ignore[union-attr]
        out["data"].append(check.data if ok else None)  # type: ignore[union-attr]
    schema = pa.schema(
        [LISTING_SCHEMA.field(c) for c in _META_COLS]
        + [
            ("part", pa.int32()),
            ("row", pa.int32()),
            ("status", pa.string()),
            ("detail", pa.string()),
            ("sha256", pa.string()),
            ("phash", pa.uint64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("ext", pa.string()),
            ("data", pa.binary()),
        ]
    )
    fs.write_parquet(layout.decoded_part(part), pa.table(out, schema=schema))


_DECISION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("orig_path", pa.string()),
        ("part", pa.int32()),
        ("row", pa.int32()),
        ("split", pa.string()),
        ("duplicate_of", pa.string()),
        ("leak_with", pa.string()),
    ]
)


def _exact_group(group: pa.Table) -> pa.Table:
    """Exact twins: within a role keep the first listed, quarantine the rest; across roles flag leakage."""
    if group.num_rows < 2:
        return _DECISION_SCHEMA.empty_table()
    rows = sorted(group.to_pylist(), key=lambda r: (SPLIT_ORDER[r["split"]], r["part"], r["row"]))
    first_of_role: dict[str, str] = {}
    out = []
    for r in rows:
        role = ROLE[r["split"]]
        rep = first_of_role.setdefault(role, r["key"])
        others = sorted({x["split"] for x in rows if ROLE[x["split"]] != role})
        out.append(
            {
                "key": r["key"],
                "orig_path": r["orig_path"],
                "part": r["part"],
                "row": r["row"],
                "split": r["split"],
                "duplicate_of": rep if rep != r["key"] else None,
                "leak_with": ",".join(others) or None,
            }
        )
    out = [o for o in out if o["duplicate_of"] or o["leak_with"]]
    return pa.Table.from_pylist(out, schema=_DECISION_SCHEMA)


def _near_group(group: pa.Table) -> pa.Table:
    """Perceptual twins across roles are flagged as leakage (never quarantined)."""
    roles = {ROLE[s] for s in group["split"].to_pylist()}
    if len(roles) < 2:
        return _DECISION_SCHEMA.empty_table()
    rows = group.to_pylist()
    out = [
        {
            "key": r["key"],
            "orig_path": r["orig_path"],
            "part": r["part"],
            "row": r["row"],
            "split": r["split"],
            "duplicate_of": None,
            "leak_with": ",".join(sorted({x["split"] for x in rows if ROLE[x["split"]] != ROLE[r["split"]]})),
        }
        for r in rows
    ]
    return pa.Table.from_pylist(out, schema=_DECISION_SCHEMA)


def _twin_groups(t: pa.Table, column: str) -> Iterator[pa.Table]:
    """The rows of ``t`` that share a value of ``column`` with another row, one table per value: what Ray's
    ``groupby(column).map_groups`` hands :func:`_exact_group` / :func:`_near_group`, less the single rows, for which
    both decide nothing."""
    counts = pc.value_counts(t[column])
    shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if not len(shared):
        return
    rows = t.filter(pc.is_in(t[column], value_set=shared)).sort_by(column)
    values = rows[column].to_pylist()
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            yield rows.slice(start, i - start)
            start = i


def _merge_decisions(exact: list[dict[str, Any]], near: list[dict[str, Any]]) -> pa.Table:
    merged: dict[str, dict[str, Any]] = {}
    for r in [*exact, *near]:
        cur = merged.setdefault(r["key"], {**r, "leak_with": None})
        if r["duplicate_of"]:
            cur["duplicate_of"] = r["duplicate_of"]
        if r["leak_with"]:
            splits = set((cur["leak_with"] or "").split(",")) | set(r["leak_with"].split(","))
            cur["leak_with"] = ",".join(sorted(s for s in splits if s))
    rows = sorted(merged.values(), key=lambda r: r["key"])
    return pa.Table.from_pylist(rows, schema=_DECISION_SCHEMA)


def _write_shard_row(job: dict[str, Any], *, layout: SourceLayout, source: str) -> dict[str, Any]:
    write_shard(layout, source, job)
    return {"shard": job["shard"]}


def write_shard(layout: SourceLayout, source: str, job: dict[str, Any]) -> None:
    """Write one tar (fixed mtime, members sorted per key) and then its manifest part."""
    decisions = fs.read_parquet(f"{layout.work_dir}/decisions.parquet")
    dup_keys = set(decisions.filter(pc.is_valid(decisions["duplicate_of"]))["key"].to_pylist())
    leaks = {
        k: v
        for k, v in zip(decisions["key"].to_pylist(), decisions["leak_with"].to_pylist(), strict=True)
        if v is not None
    }
    name = shard_name(source, job["shard"])
    rows: list[dict[str, Any]] = []
    for part, offset in zip(job["parts"], job["offsets"], strict=True):
        t = fs.read_parquet(layout.decoded_part(part))
        t = t.filter(pc.equal(t["status"], "ok"))
        kept = [r for r in t.to_pylist() if r["key"] not in dup_keys]
        lo, hi = max(job["lo"] - offset, 0), job["hi"] - offset
        rows.extend(kept[lo:hi])
    members: list[tuple[str, bytes]] = []
    for r in rows:
        meta = {c: r[c] for c in _META_COLS} | {"source": source}
        members += [
            (f"{r['key']}.json", json.dumps(meta, sort_keys=True).encode()),
            (f"{r['key']}.{r['ext']}", r["data"]),
        ]
    fs.write_bytes(layout.shard(job["shard"]), tar_bytes(members))
    manifest = {
        "key": [r["key"] for r in rows],
        "shard": [name] * len(rows),
        "source": [source] * len(rows),
        "orig_path": [r["orig_path"] for r in rows],
        "sha256": [r["sha256"] for r in rows],
        "phash": [r["phash"] for r in rows],
        "width": [r["width"] for r in rows],
        "height": [r["height"] for r in rows],
        "label": [r["label"] for r in rows],
        "split": [r["split"] for r in rows],
        "group": [r["group"] for r in rows],
        "frame": [r["frame"] for r in rows],
        "valence": [r["valence"] for r in rows],
        "arousal": [r["arousal"] for r in rows],
        "leak_with": [leaks.get(r["key"]) for r in rows],
    }
    fs.write_parquet(layout.manifest_part(job["shard"]), pa.table(manifest, schema=MANIFEST_SCHEMA))


def _listing_table(rows: list[Any]) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in LISTING_SCHEMA}
    for r in rows:
        for c in cols:
            v = getattr(r, c)
            cols[c].append(list(v) if c == "box" and v is not None else v)
    return pa.table(cols, schema=LISTING_SCHEMA)


def _chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _value_counts(arr: pa.ChunkedArray) -> dict[str, int]:
    return {str(d["values"]): int(d["counts"]) for d in pc.value_counts(arr).to_pylist()}


def run_ingest(cfg: Config, source: str) -> StageResult:
    """Ingest the source ``source`` of ``cfg`` under ``cfg.storage.root`` (skipped when committed with the same
    fingerprint)."""
    return IngestStage(StageContext(cfg, source=source)).execute()
