"""Threshold stage: per-class thresholds of one round from ``score/stats.json`` with the configured policy."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engine.config import ThresholdConfig
from engine.io import fs
from engine.labels import LabelSpace
from engine.layout import RoundLayout, join
from engine.stages.base import RunOutput, Stage
from engine.stats import ScoreStats


def build_policy(cfg: ThresholdConfig, space: LabelSpace, *, num_unlabelled: int | None = None) -> Any:
    """The policy named in ``cfg``, with ``never_label`` names mapped to class indices of ``space``."""
    from engine.thresholds import get_policy

    params = {k: v for k, v in asdict(cfg).items() if k not in ("policy", "never_label")}
    params["never_label"] = tuple(space.index(n) for n in cfg.never_label)
    params["num_classes"] = len(space.classes)
    if num_unlabelled is not None:
        params["num_unlabelled"] = num_unlabelled
    return get_policy(cfg.policy, params)


class ThresholdStage(Stage):
    """Fit the configured policy to the round's score statistics; write ``thresholds.json`` and ``state.json``."""

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
        from engine.thresholds.base import thresholds_to_json

        stats = ScoreStats.from_json(fs.read_json(self.layout.score_stats))
        policy = build_policy(self.cfg, self.space)
        thr = policy.fit(stats)
        passing = stats.count_at_least_per_class(thr) if hasattr(stats, "count_at_least_per_class") else None
        if passing is None:
            passing = [int(stats.count_at_least(float(t))[c]) if t <= 1 else 0 for c, t in enumerate(thr)]
        names = list(self.space.classes)
        doc = {
            "policy": self.cfg.policy,
            "params": policy.params(),
            "classes": names,
            "thresholds": thresholds_to_json(thr),
            "thresholds_by_class": dict(zip(names, thresholds_to_json(thr), strict=True)),
            "pred_counts": dict(zip(names, [int(x) for x in stats.pred_counts], strict=True)),
            "passing_counts": dict(zip(names, [int(x) for x in passing], strict=True)),
            "pool": int(stats.n),
            "mean_probs": [round(float(x), 6) for x in stats.mean_probs],
        }
        fs.write_json(self.layout.thresholds, doc)
        fs.write_json(join(self.out_dir, "state.json"), _jsonable(policy.state_dict()))
        return RunOutput(
            counts={"pool": int(stats.n), "passing": int(sum(passing))},
            extra={"thresholds": doc["thresholds_by_class"]},
        )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    from engine.thresholds.base import to_jsonable

    return to_jsonable(d)


def load_thresholds(round_layout: RoundLayout) -> dict[str, Any]:
    """The committed ``thresholds.json`` of a round."""
    return dict(fs.read_json(round_layout.thresholds))
