"""The round's self-contained ``report.html``: thresholds, selection, histograms, galleries, eval, dedup, label issues.

Everything is inlined (matplotlib plots and face thumbnails as base64 PNG, CSS in a ``<style>``), so the file can be
mailed, opened offline or stored as an MLflow artifact. Data is read from the round's committed files only:
``thresholds.json`` (this and earlier rounds), ``select/quality.json``, ``score/stats.json``, ``eval/metrics.json``
(student, and the teacher's round), the sources' ``quarantine.parquet`` / manifest leakage flags, and
``curation/label_issues.parquet`` when present. Galleries never load the score table on the driver: one Ray Data
task per score part reads (key, pred, conf), the shard's selected keys (a pushed-down parquet filter) and hidden
labels, and returns its per-class top-k per gallery; the driver merges those O(shards x classes x k) rows and fetches
only the winning images, again one task per shard.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from engine.config import Config, ReportConfig
from engine.curation import RoundRef, curation_dir, label_issues_path
from engine.errors import ConfigError
from engine.io import fs
from engine.layout import SUCCESS, RoundLayout, SourceLayout, join

log = logging.getLogger(__name__)

GALLERIES: dict[str, str] = {
    "confident": "selected, highest confidence",
    "above": "selected, just above the threshold",
    "below": "rejected, just below the threshold",
    "wrong": "selected but wrong (hidden ground truth), most confident",
}
"""Gallery kinds, in display order, with their captions."""
_STAGE_ORDER = {"score": 0, "threshold": 1, "select": 2, "train": 3, "evaluate": 4}
"""Pipeline order of the stages table (round.json stores them sorted by name; the report must not depend on it)."""
THUMB_PX = 96
"""Longest side of an inlined thumbnail, in pixels (smaller images are kept as they are)."""


def finish_round(
    cfg: Config,
    lay: RoundLayout,
    doc: dict[str, Any],
    *,
    partition_fp: str,
    tracker: Any = None,
    run_id: str | None = None,
) -> None:
    """End-of-round curation: label issues (when ``curation.label_issues``), then ``report.html`` into MLflow.

    Called by :func:`engine.round.run_round` just before ``round.json``; ``doc`` is that document.
    """
    from engine.curation import run_label_issues

    ref = RoundRef(cfg.storage.root, cfg.campaign.name, lay.index, cfg)
    if cfg.curation.label_issues:
        run_label_issues(ref, partition_fp=partition_fp, on_existing=cfg.storage.on_existing)
    if cfg.report.enabled:
        path = write_report(ref, doc=doc)
        if tracker is not None and run_id:
            tracker.log_artifact(run_id, path)


def rebuild_report(round_dir: str, overrides: Sequence[str] = (), *, label_issues: bool = False) -> str:
    """Rebuild ``report.html`` of a finished round (and its label issues first, when asked); log it to MLflow.

    The report goes into the round's MLflow run when ``round.json`` names one and the tracking store is reachable.
    """
    from engine.curation import open_round, partition_fingerprint, run_label_issues

    ref = open_round(round_dir, overrides)
    doc = fs.read_json_or_none(ref.layout.state)
    if doc is None:
        raise ConfigError(f"{ref.layout.state} is missing: round r{ref.index:03d} has not finished; run it first")
    if label_issues:
        run_label_issues(ref, partition_fp=partition_fingerprint(ref), on_existing=ref.cfg.storage.on_existing)
    path = write_report(ref, doc=doc)
    if doc.get("mlflow_run_id"):
        from engine.tracking import Tracker, default_artifact_root, default_uri

        uri = ref.cfg.tracking.uri or default_uri(ref.root)
        Tracker(uri, ref.cfg.tracking.experiment, default_artifact_root(ref.root)).log_artifact(
            doc["mlflow_run_id"], path
        )
    return path


def write_report(ref: RoundRef, *, doc: dict[str, Any] | None = None) -> str:
    """Build the round's ``report.html`` (atomically) and return its path.

    Args:
        ref: the round (see :func:`engine.curation.open_round`).
        doc: the round's ``round.json`` document; read from storage when None.
    """
    lay = ref.layout
    doc = doc if doc is not None else fs.read_json(lay.state)
    names = list(ref.space.classes)
    rc = ref.cfg.report
    parts = [_header(ref, doc)]
    images = _ImageRequests()
    if ref.index > 0 and fs.exists(lay.thresholds):
        parts.append(_thresholds_section(ref, names))
        parts.append(_selection_section(lay, names))
        parts.append(_histogram_section(lay, names, rc))
        parts.append(_gallery_section(ref, names, rc, images))
    else:
        parts.append(
            "<section><h2>Pseudo-labels</h2><p>Round 0 trains the first teacher on the labelled set alone: "
            "no scoring, thresholds or selection.</p></section>"
        )
    parts.append(_eval_section(ref, doc, names))
    parts.append(_label_issue_section(ref, names, rc, images))
    parts.append(_dedup_section(ref, rc, images))
    thumbs = fetch_thumbnails(ref.root, images.wanted)
    body = fill_thumbnails("\n".join(parts), thumbs)
    page = _PAGE.format(title=html.escape(f"{ref.campaign} r{ref.index:03d}"), style=_STYLE, body=body)
    fs.write_bytes(lay.report, page.encode())
    log.info("report r%03d: %s (%d thumbnails)", ref.index, lay.report, len(thumbs))
    return lay.report


# ---------------------------------------------------------------------- sections


def _header(ref: RoundRef, doc: dict[str, Any]) -> str:
    rows = [
        ("campaign", ref.campaign),
        ("round", f"r{ref.index:03d}"),
        ("policy", str(doc.get("policy") or "— (round 0)")),
        ("teacher", _teacher_label(doc)),
        ("student", f"{doc['student']['path']} ({str(doc['student']['fingerprint'])[:12]})"),
        ("label space", f"{ref.space.name}: {', '.join(ref.space.classes)}"),
    ]
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(doc.get("metrics", {}).items())]
    stages = [
        [
            n,
            "skipped" if s["skipped"] else f"ran {s['seconds']:.1f} s",
            str(s["fingerprint"])[:12],
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(s["counts"].items())
                if not isinstance(v, (dict, list))
            ),
        ]
        for n, s in sorted(doc.get("stages", {}).items(), key=lambda kv: (_STAGE_ORDER.get(kv[0], 99), kv[0]))
    ]
    return (
        f"<h1>{html.escape(ref.campaign)} · round r{ref.index:03d}</h1>"
        + _kv_table(rows)
        + "<h3>Stages</h3>"
        + html_table(["stage", "run", "fingerprint", "counts"], stages)
    )


def _teacher_label(doc: dict[str, Any]) -> str:
    t = doc.get("teacher")
    if not t:
        return "none (round 0 trains on the labelled set)"
    return f"{', '.join(t['paths'])} ({str(t['fingerprint'])[:12]})"


def threshold_history(ref: RoundRef, names: Sequence[str]) -> dict[str, list[float]]:
    """``{"r001": C thresholds, …}`` of rounds 1..ref.index that have ``thresholds.json`` (NaN = never label)."""
    out: dict[str, list[float]] = {}
    camp = ref.campaign_layout
    for r in range(1, ref.index + 1):
        t = fs.read_json_or_none(camp.round(r).thresholds)
        if t is None:
            continue
        by_class = t["thresholds_by_class"]
        out[f"r{r:03d}"] = [_finite(by_class.get(n)) for n in names]
    return out


def _thresholds_section(ref: RoundRef, names: list[str]) -> str:
    hist = threshold_history(ref, names)
    thr = fs.read_json(ref.layout.thresholds)
    png = grouped_bars_png(hist, names, title="Per-class thresholds by round", ylabel="threshold", ylim=(0, 1))
    rows = [[r, *[_fmt(v) for v in vals]] for r, vals in hist.items()]
    params = ", ".join(f"{k}={v}" for k, v in sorted(thr.get("params", {}).items()))
    return (
        "<section><h2>Thresholds</h2>"
        f"<p>Policy <b>{html.escape(str(thr.get('policy')))}</b> ({html.escape(params)}). "
        "A missing bar or '—' is a class that is never pseudo-labelled.</p>"
        + _img(png, "per-class thresholds by round")
        + html_table(["round", *names], rows)
        + "</section>"
    )


def _selection_section(lay: RoundLayout, names: list[str]) -> str:
    q = fs.read_json(lay.quality)
    steps = q["steps"]
    series = {step.replace("_", " "): [float(steps[step][n]) for n in names] for step in steps}
    png = grouped_bars_png(series, names, title="Selected per class before / after balancing", ylabel="samples")
    rows = [[s.replace("_", " "), *[str(steps[s][n]) for n in names]] for s in steps]
    pc_rows = [
        [
            n,
            _fmt(v["threshold"]),
            str(v["pool_pred"]),
            str(v["selected"]),
            _fmt(v.get("precision")),
            _fmt(v.get("recall")),
        ]
        for n, v in ((n, q["per_class"][n]) for n in names)
    ]
    ex = q.get("excluded", {})
    return (
        "<section><h2>Selection</h2>"
        f"<p>Pool {q['pool']:,}; selected {q['selected']:,}; <b>mask rate {q['mask_rate']:.2%}</b> "
        f"(selected / pool); pseudo-label precision {_fmt(q.get('precision'))} "
        f"({'hidden ground truth' if q.get('has_ground_truth') else 'no ground truth in the pool'}). "
        f"Excluded before thresholds: leakage {ex.get('leakage', 0)}, labelled {ex.get('labelled', 0)}, "
        f"unknown {ex.get('unknown', 0)}.</p>"
        + _img(png, "selected per class before and after balancing")
        + html_table(["step", *names], rows)
        + html_table(["class", "threshold", "pool (pred)", "selected", "precision", "recall"], pc_rows)
        + "</section>"
    )


def _histogram_section(lay: RoundLayout, names: list[str], rc: ReportConfig) -> str:
    from engine.stats import ScoreStats

    stats = ScoreStats.from_json(fs.read_json(lay.score_stats))
    thr = fs.read_json(lay.thresholds)["thresholds_by_class"]
    hist = rebin(stats.conf_hist, rc.hist_bins)
    png = histograms_png(hist, names, [_finite(thr.get(n)) for n in names])
    return (
        "<section><h2>Confidence histograms</h2><p>Teacher's max probability of the pool rows predicted as each "
        "class (log scale); the dashed line is the class threshold, rows right of it pass.</p>"
        + _img(png, "per-class confidence histograms")
        + "</section>"
    )


def _eval_section(ref: RoundRef, doc: dict[str, Any], names: list[str]) -> str:
    student = fs.read_json_or_none(ref.layout.metrics) or {}
    t = doc.get("teacher")
    t_round = _teacher_round(ref, t) if t else -1
    teacher = fs.read_json_or_none(ref.campaign_layout.round(t_round).metrics) if t_round >= 0 else None
    splits = [s for s in ref.cfg.eval.splits if s in student]
    if not splits:
        return "<section><h2>Evaluation</h2><p>No evaluated split.</p></section>"
    out = ["<section><h2>Evaluation: student vs teacher</h2>"]
    if teacher is None:
        out.append("<p>No teacher metrics (round 0, or an imported teacher).</p>")
    for split in splits:
        s, tm = student[split], (teacher or {}).get(split)
        png = confusions_png(
            {
                f"student r{ref.index:03d}": s["confusion"],
                **({f"teacher r{t_round:03d}": tm["confusion"]} if tm else {}),
            },
            names,
        )
        rows = [
            [
                n,
                *([_fmt(tm["per_class"][n]["f1"])] if tm else []),
                _fmt(s["per_class"][n]["f1"]),
                str(s["per_class"][n]["support"]),
            ]
            for n in names
        ]
        head = ["class", *(["teacher F1"] if tm else []), "student F1", "support"]
        summary = [
            ["macro-F1", *([_fmt(tm["macro_f1"])] if tm else []), _fmt(s["macro_f1"]), str(s["n"])],
            ["accuracy", *([_fmt(tm["accuracy"])] if tm else []), _fmt(s["accuracy"]), ""],
        ]
        series = {
            **({"teacher": [tm["per_class"][n]["f1"] for n in names]} if tm else {}),
            "student": [s["per_class"][n]["f1"] for n in names],
        }
        f1_png = grouped_bars_png(series, names, title=f"{split}: per-class F1", ylabel="F1", ylim=(0, 1))
        out.append(
            f"<h3>{html.escape(split)}</h3>"
            + _img(png, f"{split} confusion matrices")
            + _img(f1_png, "F1")
            + html_table(head, rows + summary)
        )
    out.append("</section>")
    return "".join(out)


def _teacher_round(ref: RoundRef, teacher: dict[str, Any]) -> int:
    """The round whose student has the teacher's fingerprint (-1 for an imported checkpoint)."""
    for r in range(ref.index - 1, -1, -1):
        d = fs.read_json_or_none(ref.campaign_layout.round(r).state)
        if d and d["student"]["fingerprint"] == teacher["fingerprint"]:
            return r
    return -1


# ---------------------------------------------------------------------- galleries


class _ImageRequests:
    """Thumbnails the report needs: shard → keys; the HTML holds a placeholder per key until they are fetched."""

    def __init__(self) -> None:
        self.wanted: dict[str, set[str]] = {}

    def tag(self, shard: str, key: str, caption: str) -> str:
        self.wanted.setdefault(shard, set()).add(key)
        return (
            f'<figure><img src="{_placeholder(key)}" alt="{html.escape(key)}" title="{html.escape(key)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )


def gallery_candidates(
    item: dict[str, Any], *, thresholds: npt.NDArray[np.float64], k: int, num_classes: int
) -> dict[str, Any]:
    """Per-class top-k of one score part for every gallery kind (runs in a Ray task).

    Args:
        item: ``part`` (score parquet), ``shard``, ``manifest`` (manifest part), ``selection`` (selection parquet).
        thresholds: (C,) per-class thresholds (inf = never).
        k: rows kept per (kind, class).

    Returns:
        Column lists ``kind, cls, key, conf, true, shard`` of at most 4 x C x k rows.
    """
    s = fs.read_parquet(item["part"], columns=["key", "pred", "conf"])
    keys = s["key"].to_pylist()
    pred = s["pred"].to_numpy().astype(np.int64)
    conf = s["conf"].to_numpy().astype(np.float64)
    sel = _selected_keys(item["selection"], item["shard"]) if item.get("selection") else set()
    selected = np.array([x in sel for x in keys], dtype=bool)
    m = fs.read_parquet(item["manifest"], columns=["key", "label"])
    truth = dict(zip(m["key"].to_pylist(), m["label"].to_pylist(), strict=True))
    true = np.array([truth.get(x, -1) for x in keys], dtype=np.int64)
    keys_arr = np.array(keys, dtype=object)
    masks = {
        "confident": (selected, -1.0),
        "above": (selected, 1.0),
        "below": (~selected & (conf < thresholds[pred]), -1.0),
        "wrong": (selected & (true >= 0) & (true != pred), -1.0),
    }
    out: dict[str, list[Any]] = {"kind": [], "cls": [], "key": [], "conf": [], "true": [], "shard": []}
    for kind, (mask, sign) in masks.items():
        for c in range(num_classes):
            idx = np.flatnonzero(mask & (pred == c))
            idx = idx[np.lexsort((keys_arr[idx], sign * conf[idx]))][:k]
            out["kind"] += [kind] * len(idx)
            out["cls"] += [c] * len(idx)
            out["key"] += [keys[i] for i in idx]
            out["conf"] += conf[idx].tolist()
            out["true"] += true[idx].tolist()
            out["shard"] += [item["shard"]] * len(idx)
    return out


def merge_candidates(rows: Sequence[dict[str, Any]], k: int) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The global top-k per (kind, class) from per-shard candidates (same order as :func:`gallery_candidates`)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        for i in range(len(r["key"])):
            groups.setdefault((r["kind"][i], int(r["cls"][i])), []).append(
                {"key": r["key"][i], "conf": float(r["conf"][i]), "true": int(r["true"][i]), "shard": r["shard"][i]}
            )
    for (kind, _), g in groups.items():
        sign = 1.0 if kind == "above" else -1.0
        g.sort(key=lambda x: (sign * x["conf"], x["key"]))
        del g[k:]
    return groups


def _selected_keys(selection: str, shard: str) -> set[str]:
    filesystem, path = fs.resolve(selection)
    t = pads.dataset(path, format="parquet", filesystem=filesystem).to_table(
        columns=["key"], filter=pc.field("shard") == shard
    )
    return set(t["key"].to_pylist())


def _gallery_section(ref: RoundRef, names: list[str], rc: ReportConfig, images: _ImageRequests) -> str:
    import ray

    from engine.stages.partition import load_rule
    from engine.stages.score import list_shards

    lay = ref.layout
    thr = np.array([_finite(v, np.inf) for v in fs.read_json(lay.thresholds)["thresholds"]], dtype=np.float64)
    sel = lay.selection if fs.exists(lay.selection) else None
    items = [
        {"shard": s.name, "part": lay.score_part(s.name), "manifest": s.manifest, "selection": sel}
        for s in list_shards(ref.root, load_rule(ref.root, ref.campaign).pool_sources)
        if fs.exists(lay.score_part(s.name))
    ]
    kwargs: dict[str, Any] = {"thresholds": thr, "k": rc.gallery_per_class, "num_classes": len(names)}
    rows = (
        list(
            ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            .map(functools.partial(_candidates_row, **kwargs))
            .iter_rows()
        )
        if items
        else []
    )
    groups = merge_candidates(rows, rc.gallery_per_class)
    has_truth = fs.read_json(lay.quality).get("has_ground_truth", False)
    out = [
        "<section><h2>Galleries</h2><p>Per class and kind, up to "
        f"{rc.gallery_per_class} pool images with the teacher's confidence"
        + ("; <i>true</i> is the hidden ground-truth label" if has_truth else "")
        + ".</p>"
    ]
    for c, n in enumerate(names):
        blocks, empty = [], []
        for kind, caption in GALLERIES.items():
            g = groups.get((kind, c), [])
            if kind == "wrong" and not has_truth:
                continue
            if not g:
                empty.append(caption)
                continue
            figs = "".join(images.tag(x["shard"], x["key"], _gallery_caption(x, kind, names)) for x in g)
            blocks.append(f"<h4>{html.escape(caption)}</h4><div class='gallery'>{figs}</div>")
        if empty:
            blocks.append(f"<p class='empty'>no image: {html.escape('; '.join(empty))}</p>")
        out.append(f"<h3>{html.escape(n)} (threshold {_fmt(_finite(thr[c]))})</h3>" + "".join(blocks))
    out.append("</section>")
    return "".join(out)


def _gallery_caption(x: dict[str, Any], kind: str, names: list[str]) -> str:
    truth = f" · true {html.escape(names[x['true']])}" if kind == "wrong" and x["true"] >= 0 else ""
    return f"{x['conf']:.3f}{truth}"


def _candidates_row(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return gallery_candidates(item, **kwargs)


def fetch_thumbnails(root: str, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    """PNG thumbnails (longest side <= THUMB_PX) of the wanted keys, one Ray task per shard."""
    import ray

    if not wanted:
        return {}
    items = [{"shard": s, "keys": sorted(ks)} for s, ks in sorted(wanted.items())]
    out: dict[str, bytes] = {}
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(functools.partial(_thumbs_row, root=root))
    for r in ds.iter_rows():
        out.update(zip(r["keys"], r["pngs"], strict=True))
    return out


def _thumbs_row(item: dict[str, Any], *, root: str) -> dict[str, Any]:
    from engine.samples import _read_members, _shard_tar

    got = _read_members(_shard_tar(root, item["shard"]), set(item["keys"]))
    return {"keys": list(got), "pngs": [thumbnail_png(b) for b in got.values()]}


def thumbnail_png(data: bytes, max_px: int = THUMB_PX) -> bytes:
    """Encoded image → PNG bytes whose longest side is at most ``max_px`` (aspect kept, never enlarged)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        img = im.convert("L") if im.mode in ("L", "I;16", "1") else im.convert("RGB")
    if max(img.size) > max_px:
        img.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------- label issues and duplicates


def _label_issue_section(ref: RoundRef, names: list[str], rc: ReportConfig, images: _ImageRequests) -> str:
    path = label_issues_path(ref.layout)
    marker = fs.read_json_or_none(join(curation_dir(ref.layout), SUCCESS))
    if marker is None or not fs.exists(path):
        return (
            "<section><h2>Label issues</h2><p>Not computed for this round (set "
            "<code>curation.label_issues: true</code>, or run jobs/curate).</p></section>"
        )
    c = marker["counts"]
    per_class = marker.get("extra", {}).get("flagged_per_class", {})
    labelled = fs.read_parquet(ref.campaign_layout.labelled, columns=["label"])
    n_lab = np.bincount(labelled["label"].to_numpy().astype(np.int64), minlength=len(names))
    rows = [
        [n, str(per_class.get(n, 0)), str(int(n_lab[i])), f"{per_class.get(n, 0) / n_lab[i]:.1%}" if n_lab[i] else "—"]
        for i, n in enumerate(names)
    ]
    top = fs.read_parquet(path).slice(0, 3 * rc.gallery_per_class).to_pylist()
    figs = (
        "".join(
            images.tag(
                r["shard"],
                r["key"],
                f"{html.escape(r['given_name'])} → {html.escape(r['suggested_name'])} · q {r['quality']:.2f}",
            )
            for r in top
        )
        or "<p class='empty'>none</p>"
    )
    return (
        "<section><h2>Label issues in the labelled set</h2>"
        f"<p>{c['flagged']:,} of {c['labelled']:,} labelled samples flagged by cleanlab "
        f"(<code>{html.escape(ref.cfg.curation.filter_by)}</code>) from {ref.cfg.curation.folds}-fold out-of-fold "
        f"probabilities (out-of-fold accuracy {c['oof_accuracy']:.3f}). Full list: "
        "<code>curation/label_issues.parquet</code>.</p>"
        + html_table(["class (given)", "flagged", "labelled", "share"], rows)
        + f"<h4>Lowest label quality (given → suggested)</h4><div class='gallery'>{figs}</div></section>"
    )


def _dedup_section(ref: RoundRef, rc: ReportConfig, images: _ImageRequests) -> str:
    c = ref.cfg.campaign
    out = ["<section><h2>Ingest: quarantine, duplicates and leakage</h2>"]
    for source in dict.fromkeys([*c.labelled, *c.unlabelled, *c.eval]):
        sl = SourceLayout(ref.root, source)
        q = fs.read_parquet(sl.quarantine, columns=["reason"]) if fs.exists(sl.quarantine) else None
        reasons = sorted(_counts(q["reason"]).items()) if q is not None else []
        exact = exact_clusters(sl)
        near = leak_clusters(sl)
        out.append(
            f"<h3>{html.escape(source)}</h3>"
            + html_table(["quarantine reason", "count"], [[r, f"{n:,}"] for r, n in reasons] or [["none", "0"]])
            + f"<p>{len(exact):,} exact-duplicate clusters inside a split role ({sum(len(m) for _, m in exact):,} "
            f"quarantined copies); {len(near):,} cross-split clusters (exact or perceptual-hash twins of val/test "
            "samples, kept in the manifest but flagged <code>leak_with</code>, never pseudo-labelled or evaluated "
            "against training).</p>"
        )
        rows = [[rep, ", ".join(m), str(len(m) + 1)] for rep, m in exact[: rc.max_clusters]]
        if rows:
            out.append(
                "<h4>Largest exact-duplicate clusters (kept → quarantined copies)</h4>"
                + html_table(["kept key", "quarantined copies", "size"], rows)
            )
        if near:
            blocks = []
            for members in near[: rc.max_clusters]:
                figs = "".join(images.tag(m["shard"], m["key"], html.escape(m["split"])) for m in members)
                blocks.append(f"<div class='cluster'>{figs}</div>")
            out.append("<h4>Largest cross-split clusters</h4>" + "".join(blocks))
    out.append("</section>")
    return "".join(out)


def exact_clusters(sl: SourceLayout) -> list[tuple[str, list[str]]]:
    """``[(kept key, [quarantined duplicate keys…]), …]`` of a source, largest cluster first, then by key."""
    if not fs.exists(sl.duplicates):
        return []
    d = fs.read_parquet(sl.duplicates, columns=["key", "duplicate_of"])
    d = d.filter(pc.is_valid(d["duplicate_of"]))
    groups: dict[str, list[str]] = {}
    for k, rep in zip(d["key"].to_pylist(), d["duplicate_of"].to_pylist(), strict=True):
        groups.setdefault(rep, []).append(k)
    return sorted(((rep, sorted(m)) for rep, m in groups.items()), key=lambda x: (-len(x[1]), x[0]))


def leak_clusters(sl: SourceLayout) -> list[list[dict[str, Any]]]:
    """Manifest rows flagged ``leak_with`` grouped by perceptual hash (exact twins share it), largest first.

    Only the flagged rows are read (a pushed-down filter), each cluster as ``[{key, shard, split}, …]``.
    """
    if not fs.exists(sl.manifest_dir):
        return []
    filesystem, path = fs.resolve(sl.manifest_dir)
    t = pads.dataset(path, format="parquet", filesystem=filesystem).to_table(
        columns=["key", "shard", "split", "phash"], filter=pc.is_valid(pc.field("leak_with"))
    )
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in t.to_pylist():
        groups.setdefault(int(r["phash"]), []).append({"key": r["key"], "shard": r["shard"], "split": r["split"]})
    clusters = [sorted(g, key=lambda m: (m["split"], m["key"])) for g in groups.values()]
    return sorted(clusters, key=lambda g: (-len(g), g[0]["key"]))


# ---------------------------------------------------------------------- plots (matplotlib, in memory)


def rebin(hist: npt.ArrayLike, bins: int) -> npt.NDArray[np.int64]:
    """Sum (C, B) fine histogram bins into (C, bins) coarse ones; B must be a multiple of ``bins``, else the
    coarse edges are the fine edges closest to ``i / bins``."""
    h = np.asarray(hist, dtype=np.int64)
    b = h.shape[1]
    edges = np.round(np.arange(bins + 1) * b / bins).astype(np.int64)
    return np.stack([h[:, edges[i] : edges[i + 1]].sum(1) for i in range(bins)], axis=1)


def grouped_bars_png(
    series: Mapping[str, Sequence[float]],
    names: Sequence[str],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> bytes:
    """Grouped bars (one group per class, one bar per series) as PNG bytes; NaN values are missing bars."""
    fig, ax = _figure(max(5.0, 1.0 + 0.3 * len(names) * max(1, len(series)) + 0.4 * len(names)), 3.4)
    k = max(1, len(series))
    x = np.arange(len(names), dtype=np.float64)
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(x - 0.4 + 0.8 / k * (i + 0.5), np.asarray(vals, dtype=np.float64), width=0.8 / k, label=label)
    ax.set_xticks(x, labels=list(names), rotation=30, ha="right")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def histograms_png(hist: npt.NDArray[np.int64], names: Sequence[str], thresholds: Sequence[float]) -> bytes:
    """A grid of per-class histograms (C, bins) over [0, 1] with each class's threshold as a dashed line."""
    from matplotlib.figure import Figure

    c, bins = hist.shape
    cols = min(4, c)
    rows = -(-c // cols)
    fig = Figure(figsize=(3.0 * cols, 2.2 * rows), dpi=100, layout="constrained")
    edges = np.arange(bins + 1) / bins
    for j in range(c):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.bar(edges[:-1], hist[j], width=1 / bins, align="edge", color="#4c72b0")
        if hist[j].any():
            ax.set_yscale("log")
        else:
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes, color="#888")
        if np.isfinite(thresholds[j]):
            ax.axvline(thresholds[j], color="#c44e52", linestyle="--", linewidth=1.5)
        ax.set_xlim(0, 1)
        ax.set_title(f"{names[j]} (n={int(hist[j].sum())}, τ={_fmt(thresholds[j])})", fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


def confusions_png(matrices: dict[str, Any], names: Sequence[str]) -> bytes:
    """Side-by-side row-normalised confusion matrices (colour = recall share, text = count)."""
    from matplotlib.figure import Figure

    c = len(names)
    fig = Figure(figsize=(1.0 + (0.6 * c + 1.2) * len(matrices), 1.2 + 0.55 * c), dpi=100, layout="constrained")
    for i, (title, cm) in enumerate(matrices.items()):
        counts = np.asarray(cm, dtype=np.int64)
        rows = counts.sum(1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        ax = fig.add_subplot(1, len(matrices), i + 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for a in range(c):
            for b in range(c):
                ax.text(
                    b,
                    a,
                    str(counts[a, b]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[a, b] > 0.5 else "black",
                )
        ax.set_xticks(range(c), labels=list(names), rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(c), labels=list(names), fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)
    return _png(fig)


def _figure(width_in: float, height_in: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------- HTML helpers


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An escaped HTML table that wraps long cells instead of scrolling sideways."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" src="{_data_uri(png)}" alt="{html.escape(alt)}">'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _placeholder(key: str) -> str:
    return f"@@thumb:{html.escape(key)}@@"


def fill_thumbnails(body: str, thumbs: dict[str, bytes]) -> str:
    """Replace every thumbnail placeholder by its data URI (a 1x1 grey PNG where the image was not found)."""
    grey = _data_uri(_GREY_PIXEL)
    return _PLACEHOLDER_RE.sub(
        lambda m: _data_uri(thumbs[k]) if (k := html.unescape(m.group(1))) in thumbs else grey, body
    )


_PLACEHOLDER_RE = re.compile(r"@@thumb:([^@]*)@@")


def _counts(arr: pa.ChunkedArray) -> dict[str, int]:
    return {str(d["values"]): int(d["counts"]) for d in pc.value_counts(arr).to_pylist()}


def _finite(v: Any, default: float = float("nan")) -> float:
    if v is None:
        return default
    f = float(v)
    return f if np.isfinite(f) else default


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    f = float(v)
    return "—" if not np.isfinite(f) else f"{f:.3f}"


_GREY_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;table-layout:fixed;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;overflow-wrap:anywhere;word-break:break-word}
th{background:#f3f3f3}table.kv th{width:11em}
img.plot{max-width:100%;height:auto;display:block;margin:.5em 0}
.gallery,.cluster{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0}
.cluster{border:1px dashed #bbb;padding:4px;display:inline-flex;margin-right:8px}
figure{margin:0;width:100px;text-align:center}
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
figcaption{font-size:.7em;overflow-wrap:anywhere}
.empty{color:#888;font-style:italic}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""
