"""The report's sections (thresholds, selection, histograms, evaluation, label issues, ingest duplicates), each a
function of the round's committed files returning HTML."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from engine.config import ReportConfig
from engine.io import fs
from engine.layout import ROUND_STAGES, SUCCESS, RoundLayout, SourceLayout, join
from engine.plots import confusions_png, grouped_bars_png, histograms_png, rebin
from engine.products.report.galleries import ImageRequests
from engine.products.report.markup import finite, fmt, html_table, img_tag, kv_table, value_counts
from engine.stages.curation import curation_dir, label_issues_path
from engine.stored import RoundRef

log = logging.getLogger(__name__)


_STAGE_ORDER = {n: i for i, n in enumerate(ROUND_STAGES)}
"""Pipeline order of the stages table (round.json stores them sorted by name; the report must not depend on it)."""


def header(ref: RoundRef, doc: dict[str, Any]) -> str:
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
        + kv_table(rows)
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
        out[f"r{r:03d}"] = [finite(by_class.get(n)) for n in names]
    return out


def thresholds_section(ref: RoundRef, names: list[str]) -> str:
    hist = threshold_history(ref, names)
    thr = fs.read_json(ref.layout.thresholds)
    png = grouped_bars_png(hist, names, title="Per-class thresholds by round", ylabel="threshold", ylim=(0, 1))
    rows = [[r, *[fmt(v) for v in vals]] for r, vals in hist.items()]
    params = ", ".join(f"{k}={v}" for k, v in sorted(thr.get("params", {}).items()))
    return (
        "<section><h2>Thresholds</h2>"
        f"<p>Policy <b>{html.escape(str(thr.get('policy')))}</b> ({html.escape(params)}). "
        "A missing bar or '—' is a class that is never pseudo-labelled.</p>"
        + (f"<p>Rule: <code>{html.escape(thr['rule'])}</code></p>" if thr.get("rule") else "")
        + img_tag(png, "per-class thresholds by round")
        + html_table(["round", *names], rows)
        + "</section>"
    )


def selection_section(lay: RoundLayout, names: list[str]) -> str:
    q = fs.read_json(lay.quality)
    steps = q["steps"]
    series = {step.replace("_", " "): [float(steps[step][n]) for n in names] for step in steps}
    png = grouped_bars_png(series, names, title="Selected per class before / after balancing", ylabel="samples")
    rows = [[s.replace("_", " "), *[str(steps[s][n]) for n in names]] for s in steps]
    pc_rows = [
        [
            n,
            fmt(v["threshold"]),
            str(v["pool_pred"]),
            str(v["selected"]),
            _kept_from(v),
            fmt(v.get("precision")),
            fmt(v.get("recall")),
        ]
        for n, v in ((n, q["per_class"][n]) for n in names)
    ]
    ex = q.get("excluded", {})
    return (
        "<section><h2>Selection</h2>"
        f"<p>Pool {q['pool']:,}; selected {q['selected']:,}; <b>mask rate {q['mask_rate']:.2%}</b> "
        f"(selected / pool); pseudo-label precision {fmt(q.get('precision'))} "
        f"({'hidden ground truth' if q.get('has_ground_truth') else 'no ground truth in the pool'}). "
        f"Excluded before thresholds: leakage {ex.get('leakage', 0)}, labelled {ex.get('labelled', 0)}, "
        f"unknown {ex.get('unknown', 0)}.</p>"
        + img_tag(png, "selected per class before and after balancing")
        + html_table(["step", *names], rows)
        + html_table(["class", "threshold", "pool (pred)", "selected", "kept from", "precision", "recall"], pc_rows)
        + "</section>"
    )


def _kept_from(per_class: dict[str, Any]) -> str:
    """The confidence a class's kept rows reach down to, marked "capped" when a cap (not the threshold) decided;
    blank for selections made before quality.json recorded it."""
    if "kept_from" not in per_class:
        return ""
    return fmt(per_class["kept_from"]) + (" (capped)" if per_class.get("capped") else "")


def histogram_section(lay: RoundLayout, names: list[str], rc: ReportConfig) -> str:
    from engine.stats import ScoreStats

    stats = ScoreStats.from_json(fs.read_json(lay.score_stats))
    thr = fs.read_json(lay.thresholds)["thresholds_by_class"]
    hist = rebin(stats.conf_hist, rc.hist_bins)
    png = histograms_png(hist, names, [finite(thr.get(n)) for n in names])
    return (
        "<section><h2>Confidence histograms</h2><p>Teacher's max probability of the pool rows predicted as each "
        "class (log scale); the dashed line is the class threshold, rows right of it pass.</p>"
        + img_tag(png, "per-class confidence histograms")
        + "</section>"
    )


def eval_section(ref: RoundRef, doc: dict[str, Any], names: list[str]) -> str:
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
                *([fmt(tm["per_class"][n]["f1"])] if tm else []),
                fmt(s["per_class"][n]["f1"]),
                str(s["per_class"][n]["support"]),
            ]
            for n in names
        ]
        head = ["class", *(["teacher F1"] if tm else []), "student F1", "support"]
        summary = [
            ["macro-F1", *([fmt(tm["macro_f1"])] if tm else []), fmt(s["macro_f1"]), str(s["n"])],
            ["accuracy", *([fmt(tm["accuracy"])] if tm else []), fmt(s["accuracy"]), ""],
        ]
        series = {
            **({"teacher": [tm["per_class"][n]["f1"] for n in names]} if tm else {}),
            "student": [s["per_class"][n]["f1"] for n in names],
        }
        f1_png = grouped_bars_png(series, names, title=f"{split}: per-class F1", ylabel="F1", ylim=(0, 1))
        out.append(
            f"<h3>{html.escape(split)}</h3>"
            + img_tag(png, f"{split} confusion matrices")
            + img_tag(f1_png, "F1")
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


def label_issue_section(ref: RoundRef, names: list[str], rc: ReportConfig, images: ImageRequests) -> str:
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


def dedup_section(ref: RoundRef, rc: ReportConfig, images: ImageRequests) -> str:
    c = ref.cfg.campaign
    out = ["<section><h2>Ingest: quarantine, duplicates and leakage</h2>"]
    for source in dict.fromkeys([*c.labelled, *c.unlabelled, *c.eval]):
        sl = SourceLayout(ref.root, source)
        q = fs.read_parquet(sl.quarantine, columns=["reason"]) if fs.exists(sl.quarantine) else None
        reasons = sorted(value_counts(q["reason"]).items()) if q is not None else []
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
