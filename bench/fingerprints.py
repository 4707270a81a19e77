"""Recompute every stage fingerprint of a committed campaign with this checkout's code and compare each with the
one in the stage's ``_SUCCESS.json``: a refactor that keeps behaviour keeps them all equal (so a re-run skips every
stage, and the committed outputs stay valid).

Usage: python bench/fingerprints.py --config conf/demo.yaml [--set storage.root=runs/demo ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import Config, load_config
from engine.io import fs
from engine.layout import CampaignLayout
from engine.round import round_stages
from engine.stages.base import Stage, StageContext, StageResult, TeacherRef, committed
from engine.stages.ingest import IngestStage
from engine.stages.partition import PartitionStage, used_sources


def campaign_stages(cfg: Config) -> list[Stage]:
    """Every stage of the committed campaign, built as the campaign builds them, upstream read from the commits."""
    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    ctx = StageContext(cfg)
    stages: list[Stage] = []
    for s in used_sources(cfg.campaign):
        stages.append(IngestStage(StageContext(cfg, source=s)))
        ctx = ctx.with_result(f"ingest:{s}", _committed(stages[-1]))
    stages.append(PartitionStage(ctx))
    ctx = ctx.with_result("partition", _committed(stages[-1]))
    r = 0
    while fs.exists(lay.round(r).state):
        t = fs.read_json(lay.round(r).state)["teacher"]
        teacher = TeacherRef.from_record(lay.root, t) if t else None
        rctx = StageContext(ctx.cfg, round=r, upstream=ctx.upstream, teacher=teacher)
        for cls in round_stages(ctx.cfg, r):
            stages.append(cls(rctx))
            rctx = rctx.with_result(cls.name, _committed(stages[-1]))
        r += 1
    return stages


def _committed(stage: Stage) -> StageResult:
    result = committed(stage.out_dir)
    if result is None:
        raise SystemExit(f"{stage.label} is not committed in {stage.out_dir}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    differ = 0
    for stage in campaign_stages(load_config(a.config, a.set)):
        stored = committed(stage.out_dir)
        now = stage.fingerprint()
        same = stored is not None and stored.fingerprint == now
        differ += not same
        was = stored.fingerprint[:12] if stored else None
        print(f"{'same     ' if same else 'DIFFERENT'} {stage.label:<16} {now[:12]}  committed {was}")
    print("every stage fingerprint equals its commit" if not differ else f"{differ} stage fingerprint(s) differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
