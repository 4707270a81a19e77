"""Threshold stage: per-class thresholds of one round from ``score/stats.json`` with the configured policy."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from engine.config import ThresholdConfig
from engine.io import fs
from engine.labels import LabelSpace
from engine.layout import RoundLayout, join
from engine.stages.base import RunOutput, Stage
from engine.stats import ScoreStats

if TYPE_CHECKING:
    from engine.thresholds.base import ThresholdPolicy


def build_policy(cfg: ThresholdConfig, space: LabelSpace, *, num_unlabelled: int | None = None) -> ThresholdPolicy:
    """The policy named in ``cfg`` with every parameter it declares taken from ``cfg``.

    ``never_label`` names are mapped to class indices of ``space``; ``num_classes`` is the size of ``space``.
    """
    from engine.thresholds import get_policy

    params = {k: v for k, v in asdict(cfg).items() if k not in ("policy", "never_label")}
    params["never_label"] = tuple(space.index(n) for n in cfg.never_label)
    params["num_classes"] = len(space.classes)
    if num_unlabelled is not None:
        params["num_unlabelled"] = num_unlabelled
    return get_policy(cfg.policy, params)


class ThresholdStage(Stage):
    """Fit the configured policy to the round's score statistics; write ``thresholds.json`` and ``state.json``.

    ``thresholds.json`` holds every number used: the policy's parameters (``params``), the whole ``threshold``
    config section (``config``), the fitted state (e.g. DTM-R's beta, FreeMatch's tau and p~), the per-class
    thresholds (``null`` = never labelled), and the pool's per-class predicted and passing counts.
    """

    name = "threshold"
    VERSION = 1

    def __init__(
        self,
        round_layout: RoundLayout,
        cfg: ThresholdConfig,
        space: LabelSpace,
        *,
        score_fp: str,
        on_existing: str = "error",
    ) -> None:
        super().__init__(
            round_layout.threshold_dir, on_existing=on_existing, label=f"threshold r{round_layout.index:03d}"
        )
        self.layout, self.cfg, self.space, self.score_fp = round_layout, cfg, space, score_fp

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {"threshold": asdict(self.cfg), "label_space": self.space.name, "score": self.score_fp}

    def run(self) -> RunOutput:
        from engine.config import to_dict
        from engine.thresholds.base import thresholds_to_json, to_jsonable

        stats = ScoreStats.from_json(fs.read_json(self.layout.score_stats))
        policy = build_policy(self.cfg, self.space)
        thr = policy.fit(stats)
        passing = passing_counts(stats, thr)
        names = list(self.space.classes)
        state = to_jsonable(policy.state_dict())
        doc = {
            "policy": self.cfg.policy,
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
