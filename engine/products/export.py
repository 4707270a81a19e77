"""Export a round's curated dataset (labelled ∪ selected pseudo-labels) as WebDataset, image folder, CSV or Hugging
Face parquet.

Every exported sample carries its lineage: ``key``, ``label`` / ``label_name``, ``origin`` (labelled or pseudo),
``source`` and ``orig_path`` (the file it was ingested from), ``shard``, ``confidence`` / ``threshold`` / ``policy``
(pseudo-labels only: the teacher's confidence and the class threshold it passed), ``weight``, ``repeat`` (Noisy
Student duplication of sparse classes; each sample is exported once), ``round`` and ``file_name`` (where it is in the
export). One Ray task per input shard reads the shard's tar once and writes its images; the per-shard sample tables
are then streamed into ``samples.parquet`` and ``samples.csv``. ``datasheet.json`` (counts per class, origin and
source, thresholds, selection, lineage fingerprints, file digests), ``datasheet.md`` (and ``README.md`` for
``hf_parquet``) are written last, ``datasheet.json`` the very last: a directory without it is an unfinished export.

Layouts (``<out>/``):

- ``webdataset``: ``shards/curated-<source shard>.tar`` with ``<key>.<png|jpg>``, ``<key>.cls`` (label index) and
  ``<key>.json`` (the sample row); read it with ``webdataset.WebDataset(urls).decode()``.
- ``imagefolder``: ``<ClassName>/<key>.<ext>`` (torchvision ``ImageFolder`` / Hugging Face ``imagefolder``).
- ``csv``: ``images/<key>.<ext>`` and ``list.csv`` (``path,label,split``: re-ingestable with ``format: csv_list``).
- ``hf_parquet``: ``data/train-<i>-of-<n>.parquet``, one per source shard (the Hub's naming), with columns ``image``
  (``{bytes, path}``, the ``datasets`` ``Image`` feature), ``label`` (``ClassLabel``), ``label_name`` and the
  lineage columns, the ``datasets`` features in the schema metadata; ``README.md`` is the dataset card (configs,
  features, the datasheet). Read it with ``datasets.load_dataset(<out>, split="train")``.

Every sample is in split ``train`` (``list.csv``'s ``split`` column, the ``hf_parquet`` file names).
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
from engine.layout import SourceLayout, join, parse_shard
from engine.products.datasheet import dataset_card, datasheet, datasheet_md
from engine.progress import track
from engine.schemas import SAMPLE_SCHEMA, hf_sample_schema
from engine.stored import RoundRef

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "imagefolder", "csv", "hf_parquet")

SPLIT = "train"
"""The split of every exported sample."""


def hf_data_file(index: int, count: int) -> str:
    """``data/train-00003-of-00012.parquet``: the ``index``-th of a split's ``count`` parquet files, as the Hub names
    them."""
    return f"data/{SPLIT}-{index:05d}-of-{count:05d}.parquet"


def export_round(ref: RoundRef, fmt: str, out_dir: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the curated dataset of round ``ref`` to ``out_dir`` in ``fmt`` and return its datasheet.

    Raises:
        ConfigError: unknown format, an unfinished round, or a non-empty ``out_dir`` without ``overwrite``.
    """
    from engine.runtime import ray_started

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
    items = [
        {"shard": s, "data_file": hf_data_file(i, len(shards)) if fmt == "hf_parquet" else None}
        for i, s in enumerate(shards)
    ]
    ray = ray_started()
    results = sorted(
        (
            {**r, "counts": json.loads(r["counts"]), "digests": json.loads(r["digests"])}
            for r in track(
                ray.data.from_items(items, override_num_blocks=max(1, len(items)))
                .map(functools.partial(_export_shard_row, **kwargs))
                .iter_rows(),
                desc=f"export r{ref.index:03d}",
                total=len(items),
                unit="shards",
            )
        ),
        key=lambda r: r["shard"],
    )
    n = _merge_parts(out_dir, [r["part"] for r in results], fmt)
    sheet = datasheet(ref, doc, thr_doc, fmt, results, n, out_dir=out_dir)
    fs.write_bytes(join(out_dir, "datasheet.md"), datasheet_md(sheet).encode())
    if fmt == "hf_parquet":
        card = dataset_card(sheet, split=SPLIT, path=f"data/{SPLIT}-*")
        fs.write_bytes(join(out_dir, "README.md"), card.encode())
    fs.write_json(join(out_dir, "datasheet.json"), sheet)
    log.info("export r%03d: %d samples as %s in %s", ref.index, n, fmt, out_dir)
    return sheet


def _export_shard_row(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    # Per-shard dicts have shard-specific keys: ship them as JSON so every Ray block has the same schema.
    r = export_shard(item["shard"], data_file=item["data_file"], **kwargs)
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
    data_file: str | None = None,
) -> dict[str, Any]:
    """Export the labelled and selected samples of one source shard; returns its counts, part path and digests.

    ``data_file`` is the shard's parquet file under ``out_dir`` (:func:`hf_data_file`): given for ``hf_parquet``,
    and only for it.
    """
    if (fmt == "hf_parquet") != (data_file is not None):
        raise ValueError(f"export_shard({shard!r}, fmt={fmt!r}): data_file is given for hf_parquet and only for it")
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
        r["file_name"] = _file_name(fmt, shard, r["key"], r["label_name"], ext, data_file)
    if data_file is not None:
        digests = _write_hf_parquet(out_dir, data_file, rows, images, names)
    else:
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


def _file_name(fmt: str, shard: str, key: str, label_name: str, ext: str, data_file: str | None) -> str:
    if fmt == "hf_parquet":
        return f"{data_file}#{key}.{ext}"
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


def _write_hf_parquet(
    out_dir: str, data_file: str, rows: list[dict[str, Any]], images: dict[str, tuple[str, bytes]], names: list[str]
) -> dict[str, str]:
    """Write one shard's rows with their encoded images as ``data_file`` (:func:`hf_sample_schema`); returns
    ``{data_file: sha256}``."""
    schema = hf_sample_schema(names)
    cols = {c: [r[c] for r in rows] for c in schema.names if c != "image"}
    cols["image"] = [{"bytes": images[r["key"]][1], "path": f"{r['key']}.{images[r['key']][0]}"} for r in rows]
    path = join(out_dir, data_file)
    fs.write_parquet(path, pa.Table.from_pydict(cols, schema=schema))
    return {data_file: hashlib.sha256(fs.read_bytes(path)).hexdigest()}


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
        writer = pq.ParquetWriter(f, SAMPLE_SCHEMA, **fs.PARQUET_WRITE)
        for p in parts:
            t = fs.read_parquet(p)
            writer.write_table(t)
            n += t.num_rows
            for r in t.to_pylist():
                w.writerow(["" if r[c] is None else r[c] for c in SAMPLE_SCHEMA.names])
                lw.writerow([r["file_name"], r["label_name"], SPLIT])
        writer.close()
    fs.write_bytes(join(out_dir, "samples.csv"), text.getvalue().encode())
    if fmt == "csv":
        fs.write_bytes(join(out_dir, "list.csv"), listing.getvalue().encode())
    fs.remove(join(out_dir, "_parts"))
    return n


def _non_empty(path: str) -> bool:
    import pyarrow.fs as pafs

    filesystem, p = fs.resolve(path)
    if filesystem.get_file_info(p).type == pafs.FileType.NotFound:
        return False
    return bool(filesystem.get_file_info(pafs.FileSelector(p, recursive=False)))
