"""The datasheet of an export (counts, thresholds, selection, lineage, file digests) and its Markdown renderings:
``datasheet.md`` and, for the ``hf_parquet`` layout, the Hugging Face dataset card ``README.md``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import yaml

from engine.io import fs
from engine.layout import SUCCESS, SourceLayout, join, parse_shard
from engine.schemas import SAMPLE_SCHEMA, hf_sample_schema
from engine.stored import RoundRef


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
    """The datasheet of an export: counts per class / origin / source, thresholds, selection and lineage
    fingerprints."""
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
    summary = {k: q.get(k) for k in ("pool", "selected", "mask_rate", "precision", "steps", "excluded")}
    return {**summary, "config": asdict(ref.cfg.select)}


def datasheet_md(sheet: dict[str, Any]) -> str:
    """A Markdown rendering of :func:`datasheet`."""
    lines = [
        f"# Datasheet: {sheet['campaign']} round r{sheet['round']:03d} ({sheet['format']})",
        "",
        f"{sheet['samples']:,} samples: {sheet['counts']['total']['labelled']:,} labelled and "
        f"{sheet['counts']['total']['pseudo']:,} pseudo-labelled. Label space `{sheet['label_space']['name']}`.",
        "Each sample's lineage (source, original path, shard, round, policy, threshold, confidence) is in "
        "`samples.parquet` / `samples.csv`.",
    ]
    return "\n".join(lines + _sections(sheet)) + "\n"


def _sections(sheet: dict[str, Any]) -> list[str]:
    """The Markdown sections shared by ``datasheet.md`` and the dataset card: counts, thresholds, lineage, files."""
    names = sheet["label_space"]["classes"]
    pc_ = sheet["counts"]["per_class"]
    lines = [
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
    return lines


def dataset_card(sheet: dict[str, Any], *, split: str, path: str) -> str:
    """The Hugging Face dataset card (``README.md``) of an ``hf_parquet`` export, built from its datasheet.

    YAML front matter (``configs`` mapping ``split`` to the parquet files matching ``path``, the ``dataset_info``
    features of :func:`engine.schemas.hf_sample_schema` with the class names, licence ``other``, task
    image-classification), then how to load it, its columns, how the pseudo-labels were chosen and the datasheet's
    counts, thresholds, lineage and file digests.
    """
    names = sheet["label_space"]["classes"]
    front = {
        "license": "other",
        "task_categories": ["image-classification"],
        "pretty_name": f"{sheet['campaign']} round r{sheet['round']:03d}",
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": path}]}],
        # No dataset_info.splits: datasets requires num_bytes there (the Arrow size as datasets measures it).
        "dataset_info": {"features": _card_features(names)},
    }
    total = sheet["counts"]["total"]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "---",
        "",
        f"# {sheet['campaign']} round r{sheet['round']:03d}: curated facial-expression dataset",
        "",
        f"{sheet['samples']:,} images: {total['labelled']:,} labelled and {total['pseudo']:,} pseudo-labelled by the "
        f"campaign's teacher, in label space `{sheet['label_space']['name']}` ({', '.join(names)}). Every row is in "
        f"split `{split}`. `datasheet.json` holds the facts below machine-readably; the licence is that of the "
        "sources (listed under Lineage), to be stated before publishing.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("path/to/this/folder", split="{split}")',
        f'# or: load_dataset("parquet", data_files="path/to/this/folder/{path}", split="{split}")',
        "```",
        "",
        "## Columns",
        "",
        "`image` (the encoded face crop, as in the source shard), `label` (class index into the names above), "
        "`label_name`, and the lineage of each sample: `key`, `origin` (`labelled` or `pseudo`), `source` and "
        "`orig_path` (the file it was ingested from), `shard`, `confidence` / `threshold` / `policy` (pseudo-labels "
        "only: the teacher's confidence and the class threshold it passed), `weight` (training loss weight), "
        "`repeat` (Noisy Student duplication of sparse classes; each sample appears once), `round` and `file_name` "
        "(`<parquet file>#<image name>`).",
        *_selection_md(sheet),
    ]
    return "\n".join(lines + _sections(sheet)) + "\n"


def _card_features(names: list[str]) -> list[dict[str, Any]]:
    """The ``dataset_info.features`` YAML of the card: the same features as the parquet schema metadata."""
    features = json.loads(hf_sample_schema(names).metadata[b"huggingface"])["info"]["features"]
    out = []
    for name, f in features.items():
        if f["_type"] == "Image":
            dtype: Any = "image"
        elif f["_type"] == "ClassLabel":
            dtype = {"class_label": {"names": {str(i): n for i, n in enumerate(f["names"])}}}
        else:
            dtype = f["dtype"]
        out.append({"name": name, "dtype": dtype})
    return out


_STEPS = ("pool_pred", "passed_threshold", "after_class_caps", "after_ratio_cap", "after_floor_rows")
"""The select stage's per-class counts in the order its rules apply (``quality.json`` stores them key-sorted)."""


def _selection_md(sheet: dict[str, Any]) -> list[str]:
    """How the pseudo-labels were chosen: threshold policy, the selection's per-class funnel and its exclusions."""
    sel, thr = sheet["selection"], sheet["thresholds"]
    lines = ["", "## How the pseudo-labels were chosen", ""]
    if sel is None or thr is None:
        return [*lines, f"Round {sheet['round']} selects no pseudo-labels: every sample is labelled."]
    excluded, steps = sel.get("excluded") or {}, sel.get("steps") or {}
    steps = {k: steps[k] for k in sorted(steps, key=lambda k: (_STEPS.index(k) if k in _STEPS else len(_STEPS), k))}
    cfg = ", ".join(f"{k}={v}" for k, v in sorted(sel["config"].items()) if v not in (None, {}, []))
    precision = "unknown (no hidden labels)" if sel["precision"] is None else f"{sel['precision']:.2%}"
    lines += [
        f"The teacher scored {sel['pool']:,} unlabelled samples. Threshold policy `{thr['policy']}` set one "
        "threshold per class (table below); a sample was a candidate for its predicted class when its confidence "
        "reached that class's threshold. The selection rules then kept the most confident candidates of each class "
        f"under its caps (`select`: {cfg}): {sel['selected']:,} pseudo-labels, a mask rate of {sel['mask_rate']:.2%}"
        f" of the pool; their precision against hidden labels is {precision}.",
        "",
        "Excluded from the pool (leakage, labelled or unknown keys) or gated after the threshold (disagreement, "
        "valence): " + ", ".join(f"{k} {v:,}" for k, v in sorted(excluded.items())) + ".",
        "",
        "Samples per class after each step (`after_floor_rows` counts Noisy Student repeats):",
        "",
        "| class | " + " | ".join(steps) + " |",
        "| --- |" + " ---: |" * len(steps),
    ]
    for n in sheet["label_space"]["classes"]:
        lines.append(f"| {n} | " + " | ".join(str(v.get(n, 0)) for v in steps.values()) + " |")
    return lines
