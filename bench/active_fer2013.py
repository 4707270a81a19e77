"""People in the loop on FER2013 with 10 % labels: which faces to ask people about, and what their labels buy.

The setting of bench/ssl_fer2013.py (conf/fer2013_ssl.yaml: 10 % of Training labelled, PublicTest val, deduplicated
PrivateTest test, the vgg_fer recipe, 40 epochs). Every row is a campaign of the engine that starts from the
supervised 10 % student of its seed (``campaign.teacher_checkpoint``) and runs review rounds: each round scores the
pool with the current teacher, exports a batch of B faces chosen by the row's rule (``review.rule``), simulated people
answer it (bench/simulated_people.py: one FER+ crowd vote per face, the headline; or the vote majority, ``expert``;
or the FER2013 label, ``oracle``), their Label Studio export goes through ``fer-engine review import``'s code, and
the round's student trains from scratch on the labelled + every reviewed face (``select.cap_per_class=0``: no
pseudo-labels), or on those plus the round's DTM-R pseudo-labels (``--pseudo``, rows ``<rule>+PL``).

A row's point after r rounds is the test macro-F1 of round r's student against the faces people labelled so far.
Label efficiency = the faces ``random`` needs (linear between its points) to reach the F1 the rule reaches with its
faces, over the rule's faces.

    python bench/active_fer2013.py --rules random margin entropy near_threshold --seeds 0
    python bench/active_fer2013.py --rules random margin --seeds 0 1 2 --pseudo margin
    python bench/active_fer2013.py --rules random --rounds random=6      # random further than the others

Finished campaigns are skipped (a campaign waiting for people is answered and goes on), results are written after
every row: stop it any time and run the same command again.
    python bench/active_fer2013.py --preset tiny --root /tmp/a --out /tmp/a/active.md   # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.simulated_people import PERSONS, export_for, key_paths, load_votes  # noqa: E402
from engine.config import Config, load_config  # noqa: E402
from engine.io import fs  # noqa: E402
from engine.layout import CampaignLayout, root_path  # noqa: E402

SUPERVISED_100 = 0.5892
SUPERVISED_10 = 0.4713
"""Three-seed test macro-F1 of the supervised rows of docs/results/ssl_fer2013.md (same setting): the gap."""

PRESETS: dict[str, tuple[str, ...]] = {
    "cpu": ("select.cap_multiple_of_labelled=2.0",),  # bench/ssl_fer2013.py's cpu preset: its cap for +PL rows
    "tiny": (
        "sources.fer2013.limit=300",
        "ingest.samples_per_shard=200",
        "campaign.labelled_fraction=0.3",
        "model.name=tiny_cnn",
        "train.epochs=1",
        "train.select_best=false",
        "train.in_process=true",
        "train.tta_flip=false",
        "eval.tta_flip=false",
    ),
}
NO_PSEUDO = ("select.cap_per_class=0",)


def campaign_name(rule: str, pseudo: bool, person: str, seed: int) -> str:
    return f"{rule}{'_pl' if pseudo else ''}{'' if person == 'one_vote' else '_' + person}_s{seed}"


def base_config(args: argparse.Namespace, seed: int, name: str, extra: list[str]) -> Config:
    sets = [
        f"storage.root={args.root}",
        f"campaign.name={name}",
        f"campaign.seed={seed}",
        f"train.seed={seed}",
        *PRESETS[args.preset],
        *extra,
    ]
    if args.fer2013:
        sets.append(f"sources.fer2013.path={args.fer2013}")
    return load_config([args.config], [*sets, *args.overrides])


def teacher_of(args: argparse.Namespace, seed: int) -> tuple[str, dict[str, Any]]:
    """The supervised 10 % student of ``seed`` (its own campaign ``sup10_s<seed>``, round 0 only)."""
    from engine.campaign import run_campaign

    cfg = base_config(args, seed, f"sup10_s{seed}", ["campaign.rounds=0"])
    run_campaign(cfg)
    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    doc = fs.read_json(lay.round(0).state)
    return root_path(cfg.storage.root, doc["student"]["path"]), _round_point(lay, 0, doc, 0, None)


def run_row(
    args: argparse.Namespace, rule: str, pseudo: bool, person: str, seed: int, teacher: str, start: dict[str, Any]
) -> dict[str, Any]:
    """One campaign of review rounds, answered by simulated people until its rounds are done."""
    from engine.campaign import run_campaign
    from engine.review.answers import import_answers

    rounds = args.rounds_of.get(rule, args.rounds)
    name = campaign_name(rule, pseudo, person, seed)
    extra = [
        f"campaign.rounds={rounds}",
        f"campaign.teacher_checkpoint={teacher}",
        "campaign.stop_when_no_gain=false",  # every round's student is a point of the curve
        f"review.size={args.size}",
        f"review.rule={rule}",
        f"review.seed={seed}",
        *(() if pseudo else NO_PSEUDO),
    ]
    cfg = base_config(args, seed, name, extra)
    lay = CampaignLayout(cfg.storage.root, name)
    t0 = time.perf_counter()
    while True:
        state = run_campaign(cfg)
        wait = state.get("waiting_review")
        if not wait:
            break
        r = lay.round(int(wait["round"]))
        tasks = json.loads(fs.read_bytes(r.review_dir + "/tasks.json"))
        paths = key_paths(cfg.storage.root, [t["data"]["key"] for t in tasks])
        export = Path(cfg.storage.root) / "exports" / f"{name}_r{int(wait['round']):03d}.json"
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(json.dumps(export_for(tasks, paths, args.votes, person, seed)))
        import_answers(cfg, str(export))
    points = [start]
    faces = 0
    stage_seconds = 0.0
    for i in range(1, rounds + 1):
        doc = fs.read_json_or_none(lay.round(i).state)
        if doc is None:
            break
        stage_seconds += sum(float(st.get("seconds") or 0.0) for st in doc["stages"].values())
        answers = fs.read_parquet(lay.round(i).answers)
        faces += int(sum(1 for x in answers["label"].to_pylist() if x >= 0))
        points.append(_round_point(lay, i, doc, faces, answers))
    seconds = time.perf_counter() - t0
    earlier = args.earlier.get(name)
    if seconds < 10 and earlier is not None:  # finished by an earlier invocation: keep its time
        seconds = earlier
    return {
        "row": f"{rule}{'+PL' if pseudo else ''}{'' if person == 'one_vote' else ' (' + person + ')'}",
        "rule": rule,
        "pseudo": pseudo,
        "person": person,
        "seed": seed,
        "campaign": name,
        "points": points,
        "seconds": round(seconds, 1),
        "stage_seconds": round(stage_seconds, 1),
    }


def _round_point(lay: CampaignLayout, index: int, doc: dict[str, Any], faces: int, answers: Any) -> dict[str, Any]:
    """One point of a curve: the round's student on test, with what people said about its batch."""
    metrics = fs.read_json(lay.round(index).metrics)
    point: dict[str, Any] = {
        "round": index,
        "faces": faces,
        "test_f1": metrics["test"]["macro_f1"],
        "test_acc": metrics["test"]["accuracy"],
        "val_f1": metrics["val"]["macro_f1"],
        "per_class": {c: v["f1"] for c, v in metrics["test"]["per_class"].items()},
    }
    if answers is not None:
        import pyarrow.parquet as pq

        manifest = pq.read_table(Path(lay.root) / "sources/fer2013/manifest", columns=["key", "label"])
        truth = dict(zip(manifest["key"].to_pylist(), manifest["label"].to_pylist(), strict=True))
        rows = answers.to_pylist()
        given = [r for r in rows if r["label"] >= 0]
        point["people_vs_fer2013"] = round(sum(r["label"] != truth[r["key"]] for r in given) / len(given), 4)
        point["people_vs_teacher"] = round(sum(r["label"] != r["teacher_label"] for r in given) / len(given), 4)
        point["answers"] = {a: sum(1 for r in rows if r["answer"] == a) for a in sorted({r["answer"] for r in rows})}
        quality = doc.get("quality") or {}
        point["pseudo_labels"] = quality.get("selected", 0)
        point["pseudo_precision"] = quality.get("precision")
    return point


def ferplus_pass(args: argparse.Namespace, results: list[dict[str, Any]], *, compute: bool = True) -> dict[str, float]:
    """Test macro-F1 of every round's student against the FER+ vote majority instead of the FER2013 label (same
    deduplicated test rows, those whose majority is one basic7 class), by student fingerprint; cached in
    ``<out>_ferplus.json``. The simulated people answer with FER+ votes, so this is the test in their own
    convention: it tells a rule that teaches the wrong labels from a test that measures another convention. With
    ``compute=False`` only the cached figures are filled in."""
    import numpy as np

    from bench.simulated_people import key_paths
    from engine.labels import get_label_space
    from engine.metrics import classification_metrics
    from engine.partition_rule import load_rule
    from engine.stages.evaluate import predict_split

    cache_path = Path(args.out).with_name(Path(args.out).stem + "_ferplus.json")
    cache: dict[str, float] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    names = list(get_label_space("basic7").classes)
    tta = base_config(args, 0, "sup10_s0", []).eval.tta_flip
    truth: dict[str, int] = {}
    for x in results:
        rule = load_rule(args.root, x["campaign"])
        lay = CampaignLayout(args.root, x["campaign"])
        for p in x["points"]:
            doc = fs.read_json(lay.round(p["round"]).state) if p["round"] else None
            if doc is None:  # round 0: the supervised 10 % student the row started from
                doc = fs.read_json(CampaignLayout(args.root, f"sup10_s{x['seed']}").round(0).state)
            fp, path = doc["student"]["fingerprint"], root_path(args.root, doc["student"]["path"])
            if fp not in cache and compute:
                pred = predict_split(args.root, rule, path, "test", 512, tta, in_process_rows=10**9)
                keys = [str(k) for k in pred.keys]
                missing = [k for k in keys if k not in truth]
                paths = key_paths(args.root, missing) if missing else {}
                for k, fer_path in paths.items():
                    votes = {a: n for a, n in args.votes[fer_path]["votes"].items() if a in names}
                    top = sorted(votes.values(), reverse=True)
                    single = bool(top) and (len(top) == 1 or top[0] > top[1])
                    truth[k] = names.index(max(votes, key=votes.__getitem__)) if single else -1
                y = np.array([truth[k] for k in keys])
                keep = y >= 0
                cache[fp] = float(classification_metrics(y[keep], pred.probs[keep].argmax(1), names)["macro_f1"])
                cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
                print(f"[ferplus] {x['campaign']} r{p['round']}: {cache[fp]:.4f} ({keep.sum()} faces)", flush=True)
            if fp in cache:
                p["test_f1_ferplus"] = cache[fp]
    return cache


# -- the report -----------------------------------------------------------------------------------------------------


def faces_to_reach(points: list[dict[str, Any]], f1: float) -> float | None:
    """Faces a curve (mean over seeds) needs to reach ``f1``: linear between its points; None when it never does."""
    for a, b in itertools.pairwise(points):
        if a["test_f1"] >= f1:
            return float(a["faces"])
        if b["test_f1"] >= f1:
            return a["faces"] + (f1 - a["test_f1"]) / (b["test_f1"] - a["test_f1"]) * (b["faces"] - a["faces"])
    return float(points[0]["faces"]) if points and points[0]["test_f1"] >= f1 else None


def mean_curve(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round over a row's seeds: mean faces, mean test F1 (rounds every seed reached)."""
    n = min(len(x["points"]) for x in results)
    return [
        {
            "round": i,
            "faces": statistics.mean(x["points"][i]["faces"] for x in results),
            "test_f1": statistics.mean(x["points"][i]["test_f1"] for x in results),
            "std": statistics.stdev([x["points"][i]["test_f1"] for x in results]) if len(results) > 1 else None,
        }
        for i in range(n)
    ]


def by_row(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for x in results:
        out.setdefault(x["row"], []).append(x)
    return out


def render(args: argparse.Namespace, results: list[dict[str, Any]], teachers: dict[int, dict[str, Any]]) -> str:
    rows = by_row(results)
    sup10 = statistics.mean(t["test_f1"] for t in teachers.values()) if teachers else None
    lines = [
        "# People in the loop: review rules on FER2013 with 10 % labels",
        "",
        "Made by (each invocation adds or resumes rows; finished campaigns are skipped):",
        "",
        *(f"    python bench/active_fer2013.py {' '.join(a)}" for a in args.invocations),
        "",
        f"Dated {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, {_cpus()} CPU cores, no GPU, Python "
        f"{platform.python_version()}.",
        "",
        f"Setting: conf/fer2013_ssl.yaml (preset `{args.preset}`), B = {args.size} faces per review round, every "
        "round's student trained from scratch on the labelled + reviewed faces (rows `+PL`: and that round's DTM-R "
        "pseudo-labels, cap 2 × labelled), from the supervised 10 % student of the same seed. People: simulated, "
        "one FER+ crowd vote per face unless the row says otherwise. Figures: test macro-F1 of each round's student "
        "on the deduplicated PrivateTest; mean ± std over seeds where a row has several. Gap = supervised 10 % → "
        f"100 % ({SUPERVISED_10} → {SUPERVISED_100}, three-seed means of docs/results/ssl_fer2013.md); Δ compares "
        "each row with the supervised 10 % student it started from (same seed). Minutes: the larger of the wall time "
        "and the sum of the rounds' stage times (a row resumed by a later invocation).",
        "",
    ]
    if sup10 is not None:
        lines += [f"Supervised 10 % students of these seeds (round 0, 0 faces): test macro-F1 {sup10:.4f}.", ""]
    head = "| row | seeds | " + " | ".join(f"after {k} round{'s' if k > 1 else ''}" for k in range(1, 4))
    lines += [
        head + " | faces labelled (last) | Δ vs its supervised 10 % | gap recovered | label efficiency vs random "
        "| people ≠ FER2013 | test F1 vs FER+ majority (start → last) | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in rows.items():
        curve = mean_curve(res)
        cells = []
        for k in range(1, 4):
            if k < len(curve):
                c = curve[k]
                cells.append(f"{c['test_f1']:.4f}" + (f" ± {c['std']:.4f}" if c["std"] is not None else ""))
            else:
                cells.append("")
        last = curve[-1]
        gap = (last["test_f1"] - SUPERVISED_10) / (SUPERVISED_100 - SUPERVISED_10)
        eff = ""
        person = res[0]["person"]
        base = rows.get("random" + ("" if person == "one_vote" else f" ({person})"))  # random, same people
        random_curve = mean_curve(base) if base else None
        if random_curve is not None and res[0]["rule"] != "random" and len(curve) > 1:
            need = faces_to_reach(random_curve, last["test_f1"])
            if last["test_f1"] <= curve[0]["test_f1"]:
                eff = "— (below its start)"
            elif need is None:
                eff = f"> {random_curve[-1]['faces'] / last['faces']:.2f} (random never reaches it)"
            else:
                eff = f"{need / last['faces']:.2f}"
        delta = last["test_f1"] - curve[0]["test_f1"]
        wrong = [p["people_vs_fer2013"] for x in res for p in x["points"][1:] if "people_vs_fer2013" in p]
        n = len(curve) - 1
        plus = [(x["points"][0].get("test_f1_ferplus"), x["points"][n].get("test_f1_ferplus")) for x in res]
        ferplus = ""
        if all(a is not None and b is not None for a, b in plus):
            ferplus = f"{statistics.mean(a for a, _ in plus):.4f} → {statistics.mean(b for _, b in plus):.4f}"
        lines.append(
            f"| {name} | {', '.join(str(x['seed']) for x in res)} | {' | '.join(cells)} | {last['faces']:.0f} | "
            f"{delta:+.4f} | {gap:+.1%} | {eff} | {statistics.mean(wrong):.1%} | {ferplus} | "
            f"{sum(max(x['seconds'], x.get('stage_seconds', 0.0)) for x in res) / 60:.1f} |"
        )
    lines += ["", "## Test F1 per class after the last round (mean over seeds)", ""]
    classes = list(next(iter(teachers.values()))["per_class"]) if teachers else []
    lines += ["| row | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    if teachers:
        lines.append(
            "| supervised 10 % | "
            + " | ".join(f"{statistics.mean(t['per_class'][c] for t in teachers.values()):.3f}" for c in classes)
            + " |"
        )
    for name, res in rows.items():
        n = min(len(x["points"]) for x in res) - 1
        lines.append(
            f"| {name} | "
            + " | ".join(f"{statistics.mean(x['points'][n]['per_class'][c] for x in res):.3f}" for c in classes)
            + " |"
        )
    lines += ["", "## Per round (each seed)", ""]
    lines += [
        "| row | seed | round | faces | test F1 | val F1 | test F1 vs FER+ | people ≠ FER2013 | people ≠ teacher "
        "| answers | pseudo-labels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in rows.items():
        for x in res:
            for p in x["points"][1:]:
                answers = ", ".join(f"{k} {v}" for k, v in p.get("answers", {}).items() if k not in classes)
                lines.append(
                    f"| {name} | {x['seed']} | {p['round']} | {p['faces']} | {p['test_f1']:.4f} | {p['val_f1']:.4f} | "
                    f"{_f4(p.get('test_f1_ferplus'))} | {p.get('people_vs_fer2013', 0):.1%} | "
                    f"{p.get('people_vs_teacher', 0):.1%} | {answers} | {p.get('pseudo_labels', 0)} |"
                )
    return "\n".join(lines) + "\n"


def _f4(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def plot(results: list[dict[str, Any]], teachers: dict[int, dict[str, Any]], path: Path) -> None:
    """Test macro-F1 against faces people labelled, one line per row (mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in by_row(results).items():
        c = mean_curve(res)
        ax.plot([p["faces"] for p in c], [p["test_f1"] for p in c], marker="o", label=f"{name} ({len(res)} seed(s))")
    ax.axhline(SUPERVISED_100, ls="--", lw=1, color="black", label="supervised 100 % (3 seeds)")
    ax.axhline(SUPERVISED_10, ls="--", lw=1, color="grey", label="supervised 10 % (3 seeds)")
    ax.set_xlabel("faces labelled by (simulated) people")
    ax.set_ylabel("test macro-F1")
    ax.set_title("FER2013, 10 % labels + review rounds")
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
    p.add_argument("--root", default="runs/active_fer2013")
    p.add_argument("--fer2013", default=None, help="FER2013 folder (default: the config's)")
    p.add_argument("--labels", default=str(REPO.parent / "shared/data/fer2013/labels.csv"))
    p.add_argument("--rules", nargs="+", default=["random", "margin", "entropy", "near_threshold"])
    p.add_argument("--pseudo", nargs="*", default=[], metavar="RULE", help="rules that also run with pseudo-labels")
    p.add_argument("--people", nargs="+", default=["one_vote"], choices=PERSONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rounds-of", nargs="*", default=[], metavar="RULE=N", help="more rounds for some rules")
    p.add_argument("--out", default=str(REPO / "docs/results/active_fer2013.md"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--render-only", action="store_true", help="rewrite the page and plot from the JSON, run nothing")
    p.add_argument(
        "--ferplus",
        action="store_true",
        help="with --render-only: first score every round's student against the FER+ vote majority (cached)",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.rounds_of = {k: int(v) for k, v in (s.split("=", 1) for s in args.rounds_of)}
    out = Path(args.out)
    earlier = out.with_suffix(".json")
    old = json.loads(earlier.read_text()) if earlier.exists() else {"rows": []}
    args.earlier = {x["campaign"]: x["seconds"] for x in old["rows"]}
    args.invocations = list(old.get("invocations", []))
    if args.render_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        teachers = {int(k): v for k, v in old.get("teachers", {}).items()}
        args.votes = load_votes(Path(args.labels))
        ferplus_pass(args, old["rows"], compute=args.ferplus)
        for x in old["rows"]:  # the stages' own seconds, for rows whose wall time covers only a resumed part
            lay = CampaignLayout(args.root, x["campaign"])
            docs = [fs.read_json_or_none(lay.round(p["round"]).state) for p in x["points"][1:]]
            if all(docs):
                x["stage_seconds"] = round(
                    sum(float(st.get("seconds") or 0) for d in docs for st in d["stages"].values()), 1
                )
        out.write_text(render(args, old["rows"], teachers))
        plot(old["rows"], teachers, out.with_suffix(".png"))
        print(out.read_text(), flush=True)
        return list(old["rows"])
    if args.argv not in args.invocations:
        args.invocations.append(args.argv)
    args.votes = load_votes(Path(args.labels))

    from engine.logs import setup_logging
    from engine.runtime import init_ray

    setup_logging()
    init_ray()
    teachers: dict[int, dict[str, Any]] = {int(k): v for k, v in old.get("teachers", {}).items()}
    paths: dict[int, str] = {}
    results: list[dict[str, Any]] = [x for x in old["rows"]]

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(args, results, teachers))
        doc = {"invocations": args.invocations, "teachers": teachers, "rows": results}
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        plot(results, teachers, out.with_suffix(".png"))

    plan = [(r, False, person) for r in args.rules for person in args.people]
    plan += [(r, True, person) for r in args.pseudo for person in args.people]
    for seed in args.seeds:
        paths[seed], teachers[seed] = teacher_of(args, seed)
    for seed in args.seeds:
        for rule, pseudo, person in plan:
            res = run_row(args, rule, pseudo, person, seed, paths[seed], teachers[seed])
            results = [x for x in results if x["campaign"] != res["campaign"]] + [res]
            last = res["points"][-1]
            print(
                f"[active] {res['row']} seed {seed}: {last['faces']} faces, test macro-F1 {last['test_f1']:.4f} "
                f"({res['seconds'] / 60:.1f} min)",
                flush=True,
            )
            write()
    write()
    print(out.read_text(), flush=True)
    return results


if __name__ == "__main__":
    main()
