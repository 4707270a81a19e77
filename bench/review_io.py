"""Engine time of a review batch on FER2013: the review stage (rank the scored pool, write the Label Studio project)
and the import of people's answers, for a batch of B faces.

A campaign of the bench/active_fer2013.py setting starts from a given teacher (a supervised 10 % student, e.g. that
benchmark's ``sup10_s0``) and runs round 1 up to its batch (scoring the pool once, outside the figures); then the
review stage runs R more times from scratch on that committed score (its folder removed first), and each batch is
answered by the simulated one-vote person and imported (its answers folder removed first).

    python bench/review_io.py --root runs/active_fer2013 --teacher campaigns/sup10_s0/rounds/r000/train/student.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.simulated_people import export_for, key_paths, load_votes  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/active_fer2013")
    p.add_argument("--teacher", required=True, help="a checkpoint, relative to --root or absolute")
    p.add_argument("--config", default=str(REPO / "conf/fer2013_ssl.yaml"))
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--rule", default="margin")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--labels", default=str(REPO.parent / "shared/data/fer2013/labels.csv"))
    args = p.parse_args(argv)

    from engine.campaign import run_campaign
    from engine.config import load_config
    from engine.io import fs
    from engine.layout import SUCCESS, CampaignLayout, join
    from engine.logs import setup_logging
    from engine.review.answers import import_answers
    from engine.runtime import init_ray
    from engine.stages.base import StageContext, committed
    from engine.stages.review import ReviewStage

    setup_logging()
    init_ray()
    teacher = args.teacher if args.teacher.startswith("/") else str(Path(args.root).resolve() / args.teacher)
    votes = load_votes(Path(args.labels))

    def config(name: str):
        sets = [
            f"storage.root={args.root}",
            f"campaign.name={name}",
            "campaign.rounds=1",
            f"campaign.teacher_checkpoint={teacher}",
            f"review.size={args.size}",
            f"review.rule={args.rule}",
            "select.cap_per_class=0",
        ]
        return load_config([args.config], sets)

    cfg = config("review_io")
    run_campaign(cfg)  # round 0 (the teacher evaluated), round 1's score and threshold, a first batch
    lay = CampaignLayout(cfg.storage.root, "review_io")
    r1 = lay.round(1)
    ctx = StageContext(cfg, round=1)
    for name, out_dir in (("partition", lay.partition_dir), ("score", r1.score_dir), ("threshold", r1.threshold_dir)):
        result = committed(out_dir)
        assert result is not None, f"{out_dir} is not committed"
        ctx = ctx.with_result(name, result)
    stage_s, import_s = [], []
    for i in range(args.repeats):
        fs.remove(r1.review_dir)
        fs.remove(r1.answers_dir)
        t0 = time.perf_counter()
        ReviewStage(ctx).execute()
        stage_s.append(time.perf_counter() - t0)
        tasks = json.loads(Path(r1.review_dir, "tasks.json").read_text())
        export = Path(cfg.storage.root) / "exports" / f"review_io_{i}.json"
        export.parent.mkdir(parents=True, exist_ok=True)
        paths = key_paths(cfg.storage.root, [t["data"]["key"] for t in tasks])
        export.write_text(json.dumps(export_for(tasks, paths, votes, "one_vote", i)))
        t0 = time.perf_counter()
        import_answers(cfg, str(export))
        import_s.append(time.perf_counter() - t0)
    print(
        f"review batch of {args.size} faces by {args.rule} over a pool of "
        f"{fs.read_json(join(r1.score_dir, SUCCESS))['counts']['rows']:,} scored faces, {args.repeats} runs: "
        f"review stage {statistics.median(stage_s):.2f} s (median; {min(stage_s):.2f}-{max(stage_s):.2f}), "
        f"import {statistics.median(import_s):.2f} s (median; {min(import_s):.2f}-{max(import_s):.2f}), "
        f"export + import {statistics.median(stage_s) + statistics.median(import_s):.2f} s"
    )


if __name__ == "__main__":
    main()
