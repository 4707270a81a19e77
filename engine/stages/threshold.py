"""Threshold stage: per-class thresholds of one round from ``score/stats.json`` with the configured policy."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from engine.config import ThresholdConfig, fingerprint_fields
from engine.io import fs
from engine.labels import LabelSpace
from engine.layout import RoundLayout, join
from engine.stages.base import RunOutput, Stage, StageContext
from engine.stats import ScoreStats

if TYPE_CHECKING:
    from engine.thresholds.base import ThresholdPolicy


def build_policy(cfg: ThresholdConfig, space: LabelSpace) -> ThresholdPolicy:
    """The offline policy of the ``threshold`` section (:func:`engine.thresholds.registry.build_policy`)."""
    from engine.thresholds.registry import build_policy as from_config

    return from_config(cfg.policy, asdict(cfg), space)


class ThresholdStage(Stage):
    """Fit the configured policy to the round's score statistics; write ``thresholds.json`` and ``state.json``.

    ``thresholds.json`` holds every number used: the policy's parameters (``params``), the whole ``threshold``
    config section (``config``), the fitted state (e.g. DTM-R's beta, FreeMatch's tau and p~), the per-class
    thresholds (``null`` = never labelled), and the pool's per-class predicted and passing counts.
    """

    name = "threshold"
    RAY = False
    VERSION = 2  # 2: thresholds.json states its rule

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.layout, self.cfg, self.space = ctx.round_layout, ctx.cfg.threshold, ctx.space

    @property
    def out_dir(self) -> str:
        return self.layout.threshold_dir

    def inputs(self) -> tuple[str, ...]:
        return ("score", "partition") if self.needs_reference else ("score",)

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.thresholds, join(self.out_dir, "state.json"))

    def fingerprint_inputs(self) -> dict[str, Any]:
        fp = {
            "threshold": fingerprint_fields("threshold", self.cfg),
            "label_space": self.space.name,
            "score": self.ctx.fingerprint_of("score"),  # the teacher's fingerprint is in it
        }
        if self.needs_reference:  # the teacher's val predictions: which rows (the partition) and how (TTA)
            fp["reference"] = {
                "partition": self.ctx.fingerprint_of("partition"),
                "tta_flip": self.ctx.cfg.score.tta_flip,
            }
        return fp

    @property
    def needs_reference(self) -> bool:
        """Whether the policy is fitted on the teacher's predictions of the val split too (``precision``)."""
        from engine.thresholds.registry import policy_class

        return policy_class(self.cfg.policy).needs_reference

    def _set_reference(self, policy: ThresholdPolicy) -> dict[str, Any]:
        """Give ``policy`` the teacher's predictions on the campaign's val split; returns what it used."""
        from engine.errors import ConfigError
        from engine.stages.evaluate import predict_split

        teacher = self.ctx.teacher
        if teacher is None or len(teacher.paths) != 1:
            raise ConfigError(
                f"{self.label}: threshold.policy={self.cfg.policy} needs a single-checkpoint teacher to predict "
                "the val split; use another policy with an ensemble teacher"
            )
        score = self.ctx.cfg.score
        pred = predict_split(
            self.ctx.root,
            self.ctx.rule,
            teacher.paths[0],
            "val",
            score.batch_size,
            score.tta_flip,
            label=f"{self.label} reference",
            in_process_rows=self.ctx.cfg.eval.in_process_rows,
        )
        if not len(pred.keys):
            raise ConfigError(
                f"{self.label}: threshold.policy={self.cfg.policy} needs labelled val rows, and the campaign's eval "
                "sources have none; add an eval source with a val split or use another policy"
            )
        policy.set_reference(pred.probs.argmax(1), pred.probs.max(1), pred.y)
        return {"split": "val", "rows": len(pred.keys), "tta_flip": score.tta_flip}

    def run(self) -> RunOutput:
        from engine.config import to_dict
        from engine.thresholds.base import thresholds_to_json, to_jsonable

        stats = ScoreStats.from_json(fs.read_json(self.layout.score_stats))
        policy = build_policy(self.cfg, self.space)
        reference = self._set_reference(policy) if self.needs_reference else None
        thr = policy.fit(stats)
        passing = passing_counts(stats, thr)
        names = list(self.space.classes)
        state = to_jsonable(policy.state_dict())
        doc = {
            "policy": self.cfg.policy,
            "rule": policy.offline_rule(),
            "params": state["params"],
            "config": to_dict(self.cfg),
            "never_label": list(self.cfg.never_label),
            "classes": names,
            "thresholds": thresholds_to_json(thr),
            "thresholds_by_class": dict(zip(names, thresholds_to_json(thr), strict=True)),
            "state": state["state"],
            "pred_counts": dict(zip(names, [int(x) for x in stats.pred_counts], strict=True)),
            "passing_counts": dict(zip(names, [int(x) for x in passing], strict=True)),
            "pool": int(stats.n),
            "bins": int(stats.bins),
            "mean_conf": float(stats.mean_conf),
            "mean_probs": [float(x) for x in stats.mean_probs],
        }
        if reference is not None:
            doc["reference"] = reference
        fs.write_json(self.layout.thresholds, doc)
        fs.write_json(join(self.out_dir, "state.json"), state)
        return RunOutput(
            counts={"pool": int(stats.n), "passing": int(sum(passing))},
            extra={"thresholds": doc["thresholds_by_class"]},
        )


def passing_counts(stats: ScoreStats, thresholds: Any) -> list[int]:
    """Per-class rows of the pool with ``conf >= T(c)``, at the stats' bin resolution (0 for never-labelled classes).

    ``ScoreStats.count_at_least`` rounds a threshold that is not a bin edge up to the next edge, so this may undercount
    the select stage's exact count by the rows of one bin per class.
    """
    return [int(stats.count_at_least(float(t))[c]) if t <= 1 else 0 for c, t in enumerate(thresholds)]


def load_thresholds(round_layout: RoundLayout) -> dict[str, Any]:
    """The committed ``thresholds.json`` of a round."""
    return dict(fs.read_json(round_layout.thresholds))
