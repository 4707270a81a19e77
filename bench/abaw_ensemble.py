"""ABAW2021 sequence ensemble: does a GRU / transformer over a video's frames beat the per-frame CNN it sits on?

Builds an Aff-Wild2-format source whose videos are segments of real FER2013 faces sharing one expression
(``bench.fer_layouts.write_affwild2_segments``: train videos from FER2013Train faces, validation videos from
FER2013Valid faces, every face used once), then runs the recipe ``conf/recipes/abaw_ensemble.yaml`` as an engine
campaign (local Ray, MLflow under the root): the CNN is trained on the labelled frames, the GRU and transformer
members are fitted on its frozen features, the ensemble scores the pool, and round 1 retrains. Prints and writes
the validation macro-F1, accuracy and ABAW2021 score (0.67 F1 + 0.33 acc) of every member and of the ensemble,
per round.

The videos are a stand-in (neighbouring frames are different faces of one expression, no motion), so the figures
show that the sequence members use the window context, not how they would do on Aff-Wild2.

    python bench/abaw_ensemble.py --root runs/bench_abaw --out docs/results/abaw_ensemble.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.config import load_config  # noqa: E402
from engine.io import fs  # noqa: E402
from engine.layout import CampaignLayout  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/bench_abaw")
    p.add_argument("--train-videos", type=int, default=120)
    p.add_argument("--val-videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--segment", type=int, default=8)
    p.add_argument("--out", default=str(REPO / "docs/results/abaw_ensemble.md"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from bench.fer_layouts import write_affwild2_segments
    from engine.campaign import run_campaign
    from engine.logs import setup_logging
    from engine.runtime import init_ray

    root = Path(args.root).resolve()
    data = root / "fixture"
    if not (data / "cropped_aligned").exists():
        write_affwild2_segments(
            data, args.train_videos, args.val_videos, frames=args.frames, segment=args.segment, seed=0
        )
    cfg = load_config(
        [str(REPO / "conf/recipes/abaw_ensemble.yaml")],
        [f"storage.root={root}", f"sources.affwild2.path={data}", *args.overrides],
    )
    setup_logging()
    init_ray()
    t0 = time.perf_counter()
    state = run_campaign(cfg)
    minutes = (time.perf_counter() - t0) / 60
    lay = CampaignLayout(str(root), cfg.campaign.name)
    lines = [
        "# ABAW2021 sequence ensemble on Aff-Wild2-format videos of real faces",
        "",
        f"Command: `python bench/abaw_ensemble.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Data: {args.train_videos} train videos (labelled fraction {cfg.campaign.labelled_fraction}, the rest the "
        f"pool) and {args.val_videos} validation videos of {args.frames} frames, segments of {args.segment} frames "
        f"sharing one expression; model `{cfg.model.name}` + {list(cfg.model.temporal)}, window "
        f"{cfg.model.temporal_window}, {cfg.train.epochs} CNN epochs, {cfg.train.temporal_epochs} member epochs.  ",
        f"Machine: {platform.node()}, {os.cpu_count()} CPU cores, no GPU. Wall time {minutes:.1f} min "
        "(0 when an earlier run is reused).",
        "",
        "| round | member | val macro-F1 | val accuracy | val ABAW2021 |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(state["rounds"], key=int):
        metrics = fs.read_json(lay.round(int(r)).metrics)["val"]
        rows = [*metrics["members"].items(), ("**ensemble (teacher)**", metrics)]
        for name, m in rows:
            lines.append(f"| {r} | {name} | {m['macro_f1']:.4f} | {m['accuracy']:.4f} | {m['abaw2021']:.4f} |")
    lines += ["", f"n = {metrics['n']} validation frames. Stopped: {state.get('stopped') or 'no'}."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
