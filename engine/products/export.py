"""Export a round's curated dataset (labelled ∪ selected pseudo-labels) as WebDataset, image folder or CSV.

Every exported sample carries its lineage: ``key``, ``label`` / ``label_name``, ``origin`` (labelled or pseudo),
``source`` and ``orig_path`` (the file it was ingested from), ``shard``, ``confidence`` / ``threshold`` / ``policy``
(pseudo-labels only: the teacher's confidence and the class threshold it passed), ``weight``, ``repeat`` (Noisy
Student duplication of sparse classes; each sample is exported once), ``round`` and ``file_name`` (where it is in the
export). One Ray task per input shard reads the shard's tar once and writes its images; the per-shard sample tables
are then streamed into ``samples.parquet`` and ``samples.csv``. ``datasheet.json`` (counts per class, origin and
source, thresholds, lineage fingerprints, file digests) and ``datasheet.md`` are written last: a directory without
``datasheet.json`` is an unfinished export.

Layouts (``<out>/``):

- ``webdataset``: ``shards/curated-<source shard>.tar`` with ``<key>.<png|jpg>``, ``<key>.cls`` (label index) and
  ``<key>.json`` (the sample row); read it with ``webdataset.WebDataset(urls).decode()``.
- ``imagefolder``: ``<ClassName>/<key>.<ext>`` (torchvision ``ImageFolder`` / Hugging Face ``imagefolder``).
- ``csv``: ``images/<key>.<ext>`` and ``list.csv`` (``path,label,split``: re-ingestable with ``format: csv_list``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from engine.errors import ConfigError
from engine.io import fs
from engine.io.tars import read_members, tar_bytes
from engine.layout import SUCCESS, SourceLayout, join, parse_shard
from engine.schemas import SAMPLE_SCHEMA
from engine.stored import RoundRef

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "imagefolder", "csv")


def export_round(ref: RoundRef, fmt: str, out_dir: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the curated dataset of round ``ref`` to ``out_dir`` in ``fmt`` and return its datasheet.

    Raises:
        ConfigError: unknown format, an unfinished round, or a non-empty ``out_dir`` without ``overwrite``.
    """
    import ray

    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    lay = ref.layout
    doc = fs.read_json_or_none(lay.state)
    if doc is None:
        raise ConfigError(f"{lay.dir} has no round.json: the round is not finished; run it before exporting")
    if _non_empty(out_dir):
        if not overwrite:
            raise ConfigError(f"{out_dir} is not empty; choose a new --out directory or pass --overwrite")
        fs.remove(out_dir)
    names = list(ref.space.classes)
    thr_doc = fs.read_json(lay.thresholds) if ref.index > 0 and fs.exists(lay.thresholds) else None
    selection = lay.selection if ref.index > 0 and fs.exists(lay.selection) else None
    labelled = ref.campaign_layout.labelled
    shards = sorted(
        set(fs.read_parquet(labelled, columns=["shard"])["shard"].to_pylist())
        | (set(pc.unique(fs.read_parquet(selection, columns=["shard"])["shard"]).to_pylist()) if selection else set())
    )
    kwargs: dict[str, Any] = {
        "root": ref.root,
        "fmt": fmt,
        "out_dir": out_dir,
        "labelled": labelled,
        "selection": selection,
        "names": names,
        "thresholds": thr_doc["thresholds"] if thr_doc else None,
        "round_index": ref.index,
    }
    items = [{"shard": s} for s in shards]
    results = sorted(
        (
            {**r, "counts": json.loads(r["counts"]), "digests": json.loads(r["digests"])}
            for r in ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            .map(functools.partial(_export_shard_row, **kwargs))
            .iter_rows()
        ),
        key=lambda r: r["shard"],
    )
    n = _merge_parts(out_dir, [r["part"] for r in results], fmt)
    sheet = datasheet(ref, doc, thr_doc, fmt, results, n, out_dir=out_dir)
    fs.write_bytes(join(out_dir, "datasheet.md"), datasheet_md(sheet).encode())
    fs.write_json(join(out_dir, "datasheet.json"), sheet)
    log.info("export r%03d: %d samples as %s in %s", ref.index, n, fmt, out_dir)
    return sheet


def _export_shard_row(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    # Per-shard dicts have shard-specific keys: ship them as JSON so every Ray block has the same schema.
    r = export_shard(item["shard"], **kwargs)
    return {**r, "counts": json.dumps(r["counts"]), "digests": json.dumps(r["digests"])}


def export_shard(
    shard: str,
    *,
    root: str,
    fmt: str,
    out_dir: str,
    labelled: str,
    selection: str | None,
    names: list[str],
    thresholds: list[float | None] | None,
    round_index: int,
) -> dict[str, Any]:
    """Export the labelled and selected samples of one source shard; returns its counts, part path and digests."""
    rows = _shard_rows(shard, labelled=labelled, selection=selection, thresholds=thresholds, round_index=round_index)
    source, idx = parse_shard(shard)
    sl = SourceLayout(root, source)
    meta = fs.read_parquet(sl.manifest_part(idx), columns=["key", "orig_path"])
    orig = dict(zip(meta["key"].to_pylist(), meta["orig_path"].to_pylist(), strict=True))
    images = read_members(sl.shard(idx), {r["key"] for r in rows})
    missing = [r["key"] for r in rows if r["key"] not in images]
    if missing:
        raise RuntimeError(f"export: {len(missing)} keys have no image in {sl.shard(int(idx))}, e.g. {missing[0]}")
    for r in rows:
        ext = images[r["key"]][0]
        r.update(label_name=names[r["label"]], source=source, orig_path=orig.get(r["key"]), shard=shard)
        r["file_name"] = _file_name(fmt, shard, r["key"], r["label_name"], ext)
    digests = _write_images(fmt, out_dir, shard, rows, images)
    part = join(out_dir, "_parts", f"{shard}.parquet")
    fs.write_parquet(part, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    counts: dict[str, int] = {}
    for r in rows:
        k = f"{r['origin']}|{r['label_name']}"
        counts[k] = counts.get(k, 0) + 1
    return {"shard": shard, "part": part, "rows": len(rows), "counts": counts, "digests": digests}


def _shard_rows(
    shard: str, *, labelled: str, selection: str | None, thresholds: list[float | None] | None, round_index: int
) -> list[dict[str, Any]]:
    """The sample rows (without image-dependent fields) of one shard, sorted by key."""
    lab = _filtered(labelled, shard, ["key", "label"])
    rows = [
        {"key": k, "label": int(y), "origin": "labelled", "confidence": None, "threshold": None, "policy": None,
         "weight": 1.0, "repeat": 1, "round": round_index}
        for k, y in zip(lab["key"].to_pylist(), lab["label"].to_pylist(), strict=True)
    ]  # fmt: skip
    if selection is not None:
        sel = _filtered(selection, shard, ["key", "label", "conf", "weight", "repeat", "policy", "round"])
        for r in sel.to_pylist():
            t = thresholds[r["label"]] if thresholds is not None else None
            rows.append(
                {"key": r["key"], "label": int(r["label"]), "origin": "pseudo", "confidence": r["conf"],
                 "threshold": t, "policy": r["policy"], "weight": r["weight"], "repeat": r["repeat"],
                 "round": r["round"]}
            )  # fmt: skip
    return sorted(rows, key=lambda r: r["key"])


def _filtered(path: str, shard: str, columns: list[str]) -> pa.Table:
    filesystem, p = fs.resolve(path)
    return pads.dataset(p, format="parquet", filesystem=filesystem).to_table(
        columns=columns, filter=pc.field("shard") == shard
    )


def _file_name(fmt: str, shard: str, key: str, label_name: str, ext: str) -> str:
    if fmt == "webdataset":
        return f"shards/curated-{shard}.tar#{key}.{ext}"
    if fmt == "imagefolder":
        return f"{label_name}/{key}.{ext}"
    return f"images/{key}.{ext}"


def _write_images(
    fmt: str, out_dir: str, shard: str, rows: list[dict[str, Any]], images: dict[str, tuple[str, bytes]]
) -> dict[str, str]:
    """Write the images of one shard; returns ``{relative file: sha256}`` of the WebDataset tar (else empty)."""
    if fmt != "webdataset":
        for r in rows:
            fs.write_bytes(join(out_dir, r["file_name"]), images[r["key"]][1])
        return {}
    members = []
    for r in rows:
        ext, data = images[r["key"]]
        members += [
            (f"{r['key']}.{ext}", data),
            (f"{r['key']}.cls", str(r["label"]).encode()),
            (f"{r['key']}.json", json.dumps(r, sort_keys=True).encode()),
        ]
    data = tar_bytes(members)
    rel = f"shards/curated-{shard}.tar"
    fs.write_bytes(join(out_dir, rel), data)
    return {rel: hashlib.sha256(data).hexdigest()}


def _merge_parts(out_dir: str, parts: list[str], fmt: str) -> int:
    """Stream the per-shard tables into ``samples.parquet`` / ``samples.csv`` (and ``list.csv`` for csv)."""
    n = 0
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(SAMPLE_SCHEMA.names)
    listing = io.StringIO()
    lw = csv.writer(listing, lineterminator="\n")
    lw.writerow(["path", "label", "split"])
    with fs.atomic_write(join(out_dir, "samples.parquet")) as f:
        writer = pq.ParquetWriter(f, SAMPLE_SCHEMA, compression="zstd")
        for p in parts:
            t = fs.read_parquet(p)
            writer.write_table(t)
            n += t.num_rows
            for r in t.to_pylist():
                w.writerow(["" if r[c] is None else r[c] for c in SAMPLE_SCHEMA.names])
                lw.writerow([r["file_name"], r["label_name"], "train"])
        writer.close()
    fs.write_bytes(join(out_dir, "samples.csv"), text.getvalue().encode())
    if fmt == "csv":
        fs.write_bytes(join(out_dir, "list.csv"), listing.getvalue().encode())
    fs.remove(join(out_dir, "_parts"))
    return n


def datasheet(
    ref: RoundRef,
    doc: dict[str, Any],
    thr_doc: dict[str, Any] | None,
    fmt: str,
    results: list[dict[str, Any]],
    n: int,
    *,
    out_dir: str,
) -> dict[str, Any]:
    """The datasheet of an export: counts per class / origin / source, thresholds and lineage fingerprints."""
    names = list(ref.space.classes)
    per_class = {o: dict.fromkeys(names, 0) for o in ("labelled", "pseudo")}
    per_source: dict[str, dict[str, int]] = {}
    files: dict[str, str] = {}
    for r in results:
        src = parse_shard(r["shard"])[0]
        for k, v in r["counts"].items():
            origin, name = k.split("|", 1)
            per_class[origin][name] += v
            per_source.setdefault(src, {"labelled": 0, "pseudo": 0})[origin] += v
        files.update(r["digests"])
    files["samples.parquet"] = hashlib.sha256(fs.read_bytes(join(out_dir, "samples.parquet"))).hexdigest()
    c = ref.cfg.campaign
    sources = {}
    for s in dict.fromkeys([*c.labelled, *c.unlabelled, *c.eval]):
        marker = fs.read_json_or_none(SourceLayout(ref.root, s).success) or {}
        sources[s] = {"format": ref.cfg.source(s).format, "path": ref.cfg.source(s).path,
                      "ingest_fingerprint": marker.get("fingerprint")}  # fmt: skip
    part = fs.read_json_or_none(join(ref.campaign_layout.partition_dir, SUCCESS)) or {}
    return {
        "format": fmt,
        "samples": n,
        "campaign": ref.campaign,
        "round": ref.index,
        "label_space": {"name": ref.space.name, "classes": names},
        "counts": {
            "per_class": per_class,
            "per_source": dict(sorted(per_source.items())),
            "total": {o: sum(v.values()) for o, v in per_class.items()},
        },
        "thresholds": None
        if thr_doc is None
        else {
            "policy": thr_doc["policy"],
            "params": thr_doc.get("params", {}),
            "by_class": thr_doc["thresholds_by_class"],
        },
        "selection": _selection_summary(ref),
        "lineage": {
            "sources": sources,
            "partition_fingerprint": part.get("fingerprint"),
            "teacher": doc.get("teacher"),
            "student": doc.get("student"),
            "stages": {k: v["fingerprint"] for k, v in doc.get("stages", {}).items()},
            "mlflow_run_id": doc.get("mlflow_run_id"),
        },
        "files": dict(sorted(files.items())),
        "columns": SAMPLE_SCHEMA.names,
    }


def _selection_summary(ref: RoundRef) -> dict[str, Any] | None:
    q = fs.read_json_or_none(ref.layout.quality)
    if q is None:
        return None
    return {k: q.get(k) for k in ("pool", "selected", "mask_rate", "precision", "steps", "excluded")}


def datasheet_md(sheet: dict[str, Any]) -> str:
    """A Markdown rendering of :func:`datasheet`."""
    names = sheet["label_space"]["classes"]
    pc_ = sheet["counts"]["per_class"]
    lines = [
        f"# Datasheet: {sheet['campaign']} round r{sheet['round']:03d} ({sheet['format']})",
        "",
        f"{sheet['samples']:,} samples: {sheet['counts']['total']['labelled']:,} labelled and "
        f"{sheet['counts']['total']['pseudo']:,} pseudo-labelled. Label space `{sheet['label_space']['name']}`.",
        "Each sample's lineage (source, original path, shard, round, policy, threshold, confidence) is in "
        "`samples.parquet` / `samples.csv`.",
        "",
        "## Counts per class",
        "",
        "| class | labelled | pseudo | threshold |",
        "| --- | ---: | ---: | ---: |",
    ]
    thr = (sheet["thresholds"] or {}).get("by_class", {})
    for n in names:
        t = thr.get(n)
        lines.append(f"| {n} | {pc_['labelled'][n]} | {pc_['pseudo'][n]} | {'—' if t is None else f'{t:.4f}'} |")
    lines += ["", "## Counts per source", "", "| source | labelled | pseudo |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {v['labelled']} | {v['pseudo']} |" for s, v in sheet["counts"]["per_source"].items()]
    if sheet["thresholds"]:
        params = ", ".join(f"{k}={v}" for k, v in sorted(sheet["thresholds"]["params"].items()))
        lines += ["", "## Thresholds", "", f"Policy `{sheet['thresholds']['policy']}` ({params})."]
    lin = sheet["lineage"]
    lines += ["", "## Lineage", "", f"- campaign `{sheet['campaign']}`, round {sheet['round']}"]
    for s, v in lin["sources"].items():
        lines.append(f"- source `{s}` ({v['format']}, `{v['path']}`): ingest fingerprint `{v['ingest_fingerprint']}`")
    lines.append(f"- partition fingerprint `{lin['partition_fingerprint']}`")
    if lin["teacher"]:
        lines.append(f"- teacher `{', '.join(lin['teacher']['paths'])}` fingerprint `{lin['teacher']['fingerprint']}`")
    if lin["student"]:
        lines.append(f"- student `{lin['student']['path']}` fingerprint `{lin['student']['fingerprint']}`")
    lines += [f"- stage `{k}` fingerprint `{v}`" for k, v in lin["stages"].items()]
    lines += ["", "## Files (sha256)", ""] + [f"- `{k}` `{v}`" for k, v in sheet["files"].items()]
    return "\n".join(lines) + "\n"


def _non_empty(path: str) -> bool:
    import pyarrow.fs as pafs

    filesystem, p = fs.resolve(path)
    if filesystem.get_file_info(p).type == pafs.FileType.NotFound:
        return False
    return bool(filesystem.get_file_info(pafs.FileSelector(p, recursive=False)))
