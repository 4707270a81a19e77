"""Members stage: round 0's other ensemble members (``campaign.teacher_members``), so round 1's teacher is an ensemble.

Member 0 is the round's student (the train stage); member i (1, 2, ...) is the same train stage with ``train.seed +
i``, in its own folder ``r000/members/m<i>/`` with its own ``_SUCCESS.json``: a run stopped after member 1 resumes at
member 2 (a member stopped mid-run resumes from its last epoch, as any train stage). Members train one after another,
each with the whole ``train.num_workers`` gang. The evaluate stage then scores the ensemble of all K (mean
probabilities), and the campaign promotes it as the teacher (engine.campaign).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from engine.layout import round_name, stored_path
from engine.stages.base import RunOutput, Stage, StageContext
from engine.stages.train import TrainStage


class MemberTrainStage(TrainStage):
    """Member ``member`` (≥ 1) of round 0's ensemble: the round's train stage with ``train.seed + member``."""

    name = "member"

    def __init__(self, ctx: StageContext, member: int) -> None:
        super().__init__(ctx)
        self.member = member
        self.train_cfg = dataclasses.replace(self.train_cfg, seed=self.train_cfg.seed + member)

    @property
    def out_dir(self) -> str:
        return self.layout.member_dir(self.member)

    @property
    def label(self) -> str:
        return f"member {self.member} {round_name(self.layout.index)}"


class MembersStage(Stage):
    """Train members 1..K-1 of round 0's ensemble teacher; commits when all are committed."""

    name = "members"
    RAY = False  # each member's train stage starts Ray itself when it has work
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.layout, self.k = ctx.round_layout, ctx.cfg.campaign.teacher_members

    @property
    def out_dir(self) -> str:
        return self.layout.members_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition", "train")

    @functools.cached_property
    def members(self) -> list[MemberTrainStage]:
        return [MemberTrainStage(self.ctx, i) for i in range(1, self.k)]

    def outputs(self) -> tuple[str, ...]:
        return tuple(m.student_path for m in self.members)

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {
            "members": [m.fingerprint() for m in self.members],
            "upstream": {"train": self.ctx.fingerprint_of("train")},
        }

    def run(self) -> RunOutput:
        results = [m.execute() for m in self.members]
        copied = sum(not r.skipped and r.extra.get("reused_from") is not None for r in results)
        trained = sum(not r.skipped for r in results) - copied
        counts: dict[str, Any] = {"members": self.k, "trained": trained, "copied": copied}
        paths = [stored_path(self.ctx.root, self.layout.student)] + [
            stored_path(self.ctx.root, m.student_path) for m in self.members
        ]
        return RunOutput(
            counts=counts, extra={"checkpoints": paths, "seeds": [self.ctx.cfg.train.seed + i for i in range(self.k)]}
        )
