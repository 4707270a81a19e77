"""Select stage: thresholds → the round's pseudo-labelled set, class-balanced and leakage-guarded.

Distributed over the score parts in two passes, so the driver never holds the score tables:

1. per shard (Ray Data task): drop rows the guard forbids (leakage flag, labelled key, unknown to the manifest),
   apply the per-class threshold and return a sparse per-class histogram of the passing confidences, plus the hidden
   ground-truth counts of the pool where the manifest has labels;
2. the driver turns the summed histograms into per-class quotas (absolute cap, multiple of the labelled count, the
   unlabelled:labelled ratio cap) and a per-class cut bin;
3. per shard (Ray Data task): write the rows above the cut bin (and the whole cut bin of classes that keep it whole)
   and return the rows of partly kept cut bins; the driver orders those by (confidence desc, key), keeps each
   class's remainder, and streams the parts plus the kept boundary rows, shard by shard, into ``selection.parquet``.
   So the result is exact and deterministic, and the driver holds O(classes x bins) counts plus the rows of at most
   one confidence bin (width 1/65536) per class. Sparse classes are repeated up to ``floor_per_class`` (column
   ``repeat``, Noisy Student).

``quality.json`` holds per-class precision and recall of the pseudo-labels where hidden labels exist, the mask
rate, and per class whether a cap dropped rows that passed the threshold (``capped``) and the confidence the kept
rows reach down to (``kept_from``: above the threshold when a cap keeps only the most confident); counts before and
after each rule are in ``_SUCCESS.json`` and ``quality.json``.

Optional gates drop rows before the caps, in every pass alike: ``select.max_disagreement`` (score column
``disagreement`` of branch / ensemble teachers) and the VA-consistency bounds ``select.min_valence`` /
``select.max_valence`` (score column ``valence`` of teachers with a VA head; engine.va_gate). Rows that passed the
threshold but were gated are counted as ``excluded.disagreement`` / ``excluded.va_contradiction``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.config import SelectConfig, fingerprint_fields
from engine.io import fs
from engine.layout import join
from engine.schemas import SELECTION_SCHEMA
from engine.stages.base import RunOutput, Stage, StageContext

if TYPE_CHECKING:
    from engine.thresholds.base import ThresholdPolicy

log = logging.getLogger(__name__)

HIST_BINS = 1 << 16


def conf_bin(conf: np.ndarray) -> np.ndarray:
    """Fine histogram bin of each confidence (same function in both passes)."""
    return np.minimum((conf.astype(np.float64) * HIST_BINS).astype(np.int64), HIST_BINS - 1)


def _guarded(
    part: str, manifest: str, labelled: frozenset[str], thresholds: np.ndarray, gate: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Score rows of one shard with the guard applied: arrays key, pred, conf, passing mask, true label."""
    gate = gate or {}
    gate_cols = (["disagreement"] if gate.get("max_disagreement") is not None else []) + (
        ["valence"] if gate.get("lo") is not None else []
    )
    s = _read_score_part(part, ["key", "pred", "conf", *gate_cols])
    m = fs.read_parquet(manifest, columns=["key", "label", "leak_with"])
    keys = s["key"].to_pylist()
    # row of each score key in the manifest part, -1 when absent (quarantined or foreign): a hash join in Arrow
    pos = pc.fill_null(pc.index_in(s["key"], value_set=m["key"].combine_chunks()), -1).to_numpy().astype(np.int64)
    leak = np.array(m["leak_with"].is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    true = m["label"].to_numpy().astype(np.int64)
    in_manifest = pos >= 0
    is_leak = np.zeros(len(keys), dtype=bool)
    is_leak[in_manifest] = leak[pos[in_manifest]]
    is_lab = np.array([k in labelled for k in keys], dtype=bool)
    pred = s["pred"].to_numpy().astype(np.int64)
    conf = s["conf"].to_numpy().astype(np.float32)
    allowed = in_manifest & ~is_leak & ~is_lab
    passing = allowed & (conf >= thresholds[pred])
    no_gate = np.zeros(len(keys), dtype=bool)
    dis_gated, va_gated = no_gate, no_gate
    if gate.get("max_disagreement") is not None:
        dis = s["disagreement"].to_numpy(zero_copy_only=False).astype(np.float64)
        dis_gated = passing & (dis > float(gate["max_disagreement"]))
    if gate.get("lo") is not None:
        from engine.va_gate import va_contradicts

        val = s["valence"].to_numpy(zero_copy_only=False).astype(np.float64)
        va_gated = passing & ~dis_gated & va_contradicts(pred, val, gate["lo"], gate["hi"])
    passing = passing & ~dis_gated & ~va_gated
    y = np.full(len(keys), -1, dtype=np.int64)
    y[in_manifest] = true[pos[in_manifest]]
    return {
        "keys": keys,
        "pred": pred,
        "conf": conf,
        "passing": passing,
        "allowed": allowed,
        "true": y,
        "leak": int(is_leak.sum()),
        "labelled": int(is_lab.sum()),
        "unknown": int((~in_manifest).sum()),
        "gated_disagreement": int(dis_gated.sum()),
        "gated_va": int(va_gated.sum()),
    }


def _read_score_part(part: str, columns: list[str]) -> Any:
    """The columns of a score part; a gate column the teacher did not write is a ConfigError naming the fix."""
    from engine.errors import ConfigError

    try:
        return fs.read_parquet(part, columns=columns)
    except (pa.ArrowInvalid, KeyError) as exc:
        missing = next((c for c in columns[3:] if c in str(exc)), ", ".join(columns[3:]))
        why = {"disagreement": "a teacher with branches (model.head=esr or an ensemble)", "valence": "a VA head"}
        raise ConfigError(
            f"{part} has no column {missing!r}: the select gate needs {why.get(missing, missing)}. Set "
            "select.max_disagreement=null, select.min_valence={} and select.max_valence={}, or score with such a "
            "teacher"
        ) from None


def _pass1(
    item: dict[str, Any],
    *,
    labelled: frozenset[str],
    thresholds: np.ndarray,
    num_classes: int,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    g = _guarded(item["part"], item["manifest"], labelled, thresholds, gate)
    pred, conf, passing, allowed, true = g["pred"], g["conf"], g["passing"], g["allowed"], g["true"]
    flat = pred[passing] * HIST_BINS + conf_bin(conf[passing])
    uniq, cnt = np.unique(flat, return_counts=True)
    return {
        "hist_idx": uniq,
        "hist_cnt": cnt,
        "pool": np.bincount(pred[allowed], minlength=num_classes),
        "true_pool": np.bincount(true[allowed & (true >= 0)], minlength=num_classes),
        "excluded": np.array(
            [g["leak"], g["labelled"], g["unknown"], g["gated_disagreement"], g["gated_va"]], dtype=np.int64
        ),
    }


def selection_table(
    keys: list[str],
    shard: str,
    pred: np.ndarray,
    conf: np.ndarray,
    *,
    repeat: np.ndarray,
    weight: float | np.ndarray,
    policy: str,
    round_index: int,
) -> pa.Table:
    """Selection rows (``SELECTION_SCHEMA``) of one shard, in the given row order; ``weight`` is one number for every
    row or one per row."""
    n = len(keys)
    return pa.table(
        {
            "key": keys,
            "shard": [shard] * n,
            "label": np.asarray(pred).astype(np.int16),
            "conf": np.asarray(conf, dtype=np.float32),
            "weight": np.broadcast_to(np.asarray(weight, dtype=np.float32), (n,)),
            "repeat": repeat[np.asarray(pred, dtype=np.int64)].astype(np.int16),
            "policy": [policy] * n,
            "round": np.full(n, round_index, dtype=np.int16),
        },
        schema=SELECTION_SCHEMA,
    )


def row_weights(weight: float, weigher: ThresholdPolicy | None, pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """(N,) float32 loss weights of selected rows: ``weight``, times the policy's row weight when one is given."""
    base = np.full(len(pred), weight, dtype=np.float32)
    return base if weigher is None else base * weigher.row_weights(pred, conf)


def _pass2(
    item: dict[str, Any],
    *,
    labelled: frozenset[str],
    thresholds: np.ndarray,
    cut_bin: np.ndarray,
    whole_cut: np.ndarray,
    repeat: np.ndarray,
    weight: float,
    weigher: ThresholdPolicy | None,
    policy: str,
    round_index: int,
    out_dir: str,
    num_classes: int,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the shard's rows above its class's cut bin (or in it, when the class keeps that bin whole), sorted by key.

    Returns the counts of the written rows and, as arrays, the rows in cut bins that are only partly kept (the
    driver picks among those by confidence, then key).
    """
    g = _guarded(item["part"], item["manifest"], labelled, thresholds, gate)
    pred, conf, passing, true = g["pred"], g["conf"], g["passing"], g["true"]
    b = conf_bin(conf)
    at_cut = passing & (b == cut_bin[pred])
    idx = np.flatnonzero(passing & ((b > cut_bin[pred]) | (at_cut & whole_cut[pred])))
    keys = [g["keys"][i] for i in idx]
    order = np.argsort(np.array(keys, dtype=object), kind="stable") if keys else np.array([], dtype=np.int64)
    idx = idx[order]
    w = row_weights(weight, weigher, pred[idx], conf[idx])
    table = selection_table(
        [g["keys"][i] for i in idx],
        item["shard"],
        pred[idx],
        conf[idx],
        repeat=repeat,
        weight=w,
        policy=policy,
        round_index=round_index,
    )
    path = join(out_dir, "parts", f"part-{item['shard']}.parquet")
    fs.write_parquet(path, table)
    bnd = np.flatnonzero(at_cut & ~whole_cut[pred])
    return {
        "path": path,
        "shard": item["shard"],
        **_quality_counts(pred[idx], true[idx], num_classes),
        "weight_sum": np.bincount(pred[idx], weights=w.astype(np.float64), minlength=num_classes),
        "b_keys": [g["keys"][i] for i in bnd],
        "b_pred": pred[bnd],
        "b_conf": conf[bnd],
        "b_true": true[bnd],
    }


def _quality_counts(pred: np.ndarray, true: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class selected, with-ground-truth and correct counts of selected rows (true = -1: no hidden label)."""
    has = true >= 0
    ok = has & (true == pred)
    return {
        "selected": np.bincount(pred, minlength=num_classes),
        "with_truth": np.bincount(pred[has], minlength=num_classes),
        "correct": np.bincount(pred[ok], minlength=num_classes),
    }


def quotas(
    passing: np.ndarray, labelled_counts: np.ndarray, cfg: SelectConfig
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Per-class number of rows to keep after the caps, and the per-class counts after each rule.

    In order: ``k = passing``; ``k = min(k, cap_per_class)``;
    ``k = min(k, floor(cap_multiple_of_labelled * n_lab_c))``; then, when ``sum k`` exceeds
    ``limit = floor(max_unlabelled_ratio * sum n_lab)``, every class is scaled down
    proportionally with exact integer arithmetic, ``k_c = floor(k_c * limit / sum k)`` (so ``sum k <= limit``).
    """
    k = passing.astype(np.int64).copy()
    steps: dict[str, list[int]] = {"passed_threshold": k.tolist()}
    if cfg.cap_per_class is not None:
        k = np.minimum(k, cfg.cap_per_class)
    if cfg.cap_multiple_of_labelled is not None:
        k = np.minimum(k, np.floor(cfg.cap_multiple_of_labelled * labelled_counts).astype(np.int64))
    steps["after_class_caps"] = k.tolist()
    if cfg.max_unlabelled_ratio is not None:
        limit = math.floor(cfg.max_unlabelled_ratio * int(labelled_counts.sum()))
        total = int(k.sum())
        if total > limit:
            k = (k * limit) // total
    steps["after_ratio_cap"] = k.tolist()
    return k, steps


def kept_from(cut: int, passing: int, kept: int) -> dict[str, Any]:
    """What admitted a class's rows in the end: ``capped`` is true when a cap dropped rows that passed its
    threshold (the cap, not the threshold, then decides: the most confident rows stay); ``kept_from`` is the lower
    edge of the confidence bin (width 1/65536) of its least confident kept row, floored to 6 decimals, so every kept
    row's confidence is >= ``kept_from`` and < ``kept_from`` + 1/65536 + 1e-6 for the least confident one; None
    when nothing is kept."""
    if kept <= 0:
        return {"kept_from": None, "capped": passing > 0}
    return {"kept_from": math.floor(cut / HIST_BINS * 1e6) / 1e6, "capped": kept < passing}


def repeats(k: np.ndarray, floor_per_class: int) -> np.ndarray:
    """Per class, how many times each selected row is repeated: ``ceil(floor / k_c)`` when ``0 < k_c < floor``, else 1.

    So a sparse class contributes at least ``floor_per_class`` rows (Noisy Student duplication); exact integers.
    """
    k = np.asarray(k, dtype=np.int64)
    if floor_per_class <= 0:
        return np.ones_like(k)
    return np.where((k > 0) & (k < floor_per_class), -(-floor_per_class // np.maximum(k, 1)), 1).astype(np.int64)


def cut_bins(hist: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the bin where the top-k by confidence ends, and how many rows to take from that bin.

    Returns ``(cut_bin, take_in_cut)``; a class with k = 0 gets cut bin HIST_BINS (nothing kept).
    """
    c = hist.shape[0]
    cut = np.full(c, HIST_BINS, dtype=np.int64)
    take = np.zeros(c, dtype=np.int64)
    for j in range(c):
        if k[j] <= 0:
            continue
        from_top = np.cumsum(hist[j, ::-1])
        pos = int(np.searchsorted(from_top, k[j]))  # first index where cumulative >= k
        cut[j] = HIST_BINS - 1 - pos
        take[j] = k[j] - (from_top[pos - 1] if pos > 0 else 0)
    return cut, take


def select_gate(cfg: SelectConfig, class_names: list[str]) -> dict[str, Any] | None:
    """The row gates of ``cfg`` as plain values for the per-shard tasks, or None when no gate is set.

    ``max_disagreement`` (float or None) and, when a valence rule is set, per-class ``lo`` / ``hi`` valence bounds.
    """
    if cfg.max_disagreement is None and not cfg.min_valence and not cfg.max_valence:
        return None
    gate: dict[str, Any] = {"max_disagreement": cfg.max_disagreement}
    if cfg.min_valence or cfg.max_valence:
        from engine.labels import LabelSpace
        from engine.va_gate import valence_bounds

        lo, hi = valence_bounds(LabelSpace("select", tuple(class_names)), cfg.min_valence, cfg.max_valence)
        gate["lo"], gate["hi"] = lo.tolist(), hi.tolist()
    return gate


class SelectStage(Stage):
    """Apply thresholds, caps, the ratio cap, duplication of sparse classes and the leakage guard."""

    name = "select"
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.layout, self.cfg = ctx.round_layout, ctx.cfg.select
        self.policy, self.names = ctx.cfg.threshold.policy, list(ctx.space.classes)
        self.gate = select_gate(self.cfg, self.names)

    @property
    def out_dir(self) -> str:
        return self.layout.select_dir

    def inputs(self) -> tuple[str, ...]:
        return ("threshold", "partition")

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.selection, self.layout.quality)

    def fingerprint_inputs(self) -> dict[str, Any]:
        upstream = {
            "threshold": self.ctx.fingerprint_of("threshold"),
            "partition": self.ctx.fingerprint_of("partition"),
        }
        if "reviewed" in self.ctx.upstream:  # people's answers (only then: earlier campaigns keep their fingerprints)
            upstream["reviewed"] = self.ctx.fingerprint_of("reviewed")
        return {"select": fingerprint_fields("select", self.cfg), "upstream": upstream}

    def _read_inputs(self) -> None:
        """The committed inputs: per-class thresholds, the labelled set (keys and class counts), the score parts."""
        from engine.review.answers import removed_keys
        from engine.stages.score import list_shards
        from engine.thresholds.base import thresholds_from_json

        rule = self.ctx.rule
        self.thresholds = np.asarray(
            thresholds_from_json(fs.read_json(self.layout.thresholds)["thresholds"]), dtype=np.float64
        )
        self.weigher = self._weigher()
        if self.weigher is not None:  # rows enter where the policy's weight reaches min_weight
            self.thresholds = self.weigher.admission(self.cfg.min_weight)
        lab = fs.read_parquet(self.ctx.labelled_path, columns=["key", "label"])
        # Guarded like the labelled set: faces people said are not a face (a round with answers applied).
        self.labelled_keys = frozenset(lab["key"].to_pylist()) | removed_keys(self.layout)
        self.labelled_counts = np.bincount(lab["label"].to_numpy(), minlength=len(self.names)).astype(np.int64)
        self.items = [
            {"shard": s.name, "part": self.layout.score_part(s.name), "manifest": s.manifest}
            for s in list_shards(self.ctx.root, rule.pool_sources)
            if fs.exists(self.layout.score_part(s.name))
        ]

    def _weigher(self) -> ThresholdPolicy | None:
        """With ``weighting: policy``, the round's fitted threshold policy (from the threshold stage's state)."""
        if self.cfg.weighting != "policy":
            return None
        from engine.stages.threshold import build_policy

        policy = build_policy(self.ctx.cfg.threshold, self.ctx.space)
        policy.load_state_dict(fs.read_json(join(self.layout.threshold_dir, "state.json")))
        return policy

    def run(self) -> RunOutput:
        import ray

        self._read_inputs()
        c = len(self.names)
        common = {"labelled": self.labelled_keys, "thresholds": self.thresholds, "gate": self.gate}
        items = ray.data.from_items(self.items, override_num_blocks=max(1, len(self.items)))
        hist = np.zeros((c, HIST_BINS), dtype=np.int64)
        pool = np.zeros(c, dtype=np.int64)
        true_pool = np.zeros(c, dtype=np.int64)
        excluded = np.zeros(5, dtype=np.int64)
        for r in items.map(_pass1, fn_kwargs={**common, "num_classes": c}).iter_rows():
            idx = np.asarray(r["hist_idx"], dtype=np.int64)
            hist.reshape(-1)[idx] += np.asarray(r["hist_cnt"], dtype=np.int64)
            pool += r["pool"]
            true_pool += r["true_pool"]
            excluded += r["excluded"]
        passing = hist.sum(1)
        k, steps = quotas(passing, self.labelled_counts, self.cfg)
        cut, take = cut_bins(hist, k)
        # a class keeps its whole cut bin (e.g. when no cap applies) or only its top ``take`` rows by (conf, key)
        inside = cut < HIST_BINS
        whole = inside & (take == hist[np.arange(c), np.minimum(cut, HIST_BINS - 1)])
        repeat = repeats(k, self.cfg.floor_per_class)
        steps["after_floor_rows"] = (k * repeat).tolist()
        out: dict[str, Any] = {
            "repeat": repeat,
            "weight": self.cfg.weight,
            "policy": self.policy,
            "round_index": self.layout.index,
        }
        kwargs = {
            **common,
            **out,
            "weigher": self.weigher,
            "cut_bin": cut,
            "whole_cut": whole,
            "out_dir": self.out_dir,
            "num_classes": c,
        }
        results = sorted(items.map(_pass2, fn_kwargs=kwargs).iter_rows(), key=lambda r: r["path"])
        counts = {n: np.zeros(c, dtype=np.int64) for n in ("selected", "with_truth", "correct")}
        weight_sum = np.zeros(c, dtype=np.float64)
        boundary: list[tuple[float, str, int, int, str]] = []
        for r in results:
            weight_sum += r["weight_sum"]
            for n in counts:
                counts[n] += r[n]
            boundary += [
                (-float(cf), str(key), int(p), int(t), r["shard"])
                for key, p, cf, t in zip(r["b_keys"], r["b_pred"], r["b_conf"], r["b_true"], strict=True)
            ]
        boundary.sort()
        picked = [row for j in range(c) for row in [b for b in boundary if b[2] == j][: int(take[j])]]
        p_b = np.array([r[2] for r in picked], np.int64)
        w_b = row_weights(self.cfg.weight, self.weigher, p_b, np.array([-r[0] for r in picked], np.float32))
        chosen: dict[str, list[tuple[tuple[float, str, int, int, str], float]]] = {}
        for row, w in zip(picked, w_b.tolist(), strict=True):
            chosen.setdefault(row[4], []).append((row, w))
        if picked:
            extra = _quality_counts(p_b, np.array([r[3] for r in picked], np.int64), c)
            for n in counts:
                counts[n] += extra[n]
            weight_sum += np.bincount(p_b, weights=w_b.astype(np.float64), minlength=c)
        selected, with_truth, correct = counts["selected"], counts["with_truth"], counts["correct"]
        true_sel = correct  # a correct pseudo-label's true class is its predicted class
        with fs.atomic_write(self.layout.selection) as f:
            writer = pq.ParquetWriter(f, SELECTION_SCHEMA, **fs.PARQUET_WRITE)
            for r in results:
                table = fs.read_parquet(r["path"])
                rows = chosen.get(r["shard"])
                if rows:
                    pred_s = np.array([x[2] for x, _ in rows], dtype=np.int64)
                    conf_s = np.array([-x[0] for x, _ in rows], dtype=np.float32)
                    w_s = np.array([w for _, w in rows], dtype=np.float32)
                    keys_s = [x[1] for x, _ in rows]
                    add = selection_table(keys_s, r["shard"], pred_s, conf_s, **{**out, "weight": w_s})
                    table = pa.concat_tables([table, add]).sort_by("key")
                writer.write_table(table)
            writer.close()
        fs.remove(join(self.out_dir, "parts"))
        if not np.array_equal(selected, k):
            raise RuntimeError(f"{self.label}: selected {selected.tolist()} != quotas {k.tolist()}")
        quality = self._quality(pool, true_pool, selected, with_truth, correct, true_sel, steps, excluded)
        quality["weighting"] = {
            "rule": self.cfg.weighting,
            "weight": self.cfg.weight,
            "min_weight": self.cfg.min_weight,
        }
        for j, n in enumerate(self.names):
            quality["per_class"][n]["mean_weight"] = (
                round(float(weight_sum[j] / selected[j]), 4) if selected[j] else None
            )
            quality["per_class"][n].update(kept_from(int(cut[j]), int(passing[j]), int(k[j])))
        fs.write_json(self.layout.quality, quality)
        for empty in np.flatnonzero((selected == 0) & (pool > 0)):
            log.warning("%s: class %s has no selected sample", self.label, self.names[int(empty)])
        return RunOutput(
            counts={
                "pool": int(pool.sum()),
                "selected": int(selected.sum()),
                "rows_with_repeats": int((k * repeat).sum()),
                "excluded_leakage": int(excluded[0]),
                "excluded_labelled": int(excluded[1]),
                "excluded_unknown": int(excluded[2]),
                "gated_disagreement": int(excluded[3]),
                "gated_va": int(excluded[4]),
            },
            extra={"per_class": quality["per_class"], "steps": quality["steps"]},
        )

    def _quality(
        self,
        pool: np.ndarray,
        true_pool: np.ndarray,
        selected: np.ndarray,
        with_truth: np.ndarray,
        correct: np.ndarray,
        true_sel: np.ndarray,
        steps: dict[str, list[int]],
        excluded: np.ndarray,
    ) -> dict[str, Any]:
        names = self.names
        per_class = {}
        for j, n in enumerate(names):
            per_class[n] = {
                "threshold": None if not np.isfinite(self.thresholds[j]) else round(float(self.thresholds[j]), 6),
                "pool_pred": int(pool[j]),
                "selected": int(selected[j]),
                "precision": round(float(correct[j] / with_truth[j]), 4) if with_truth[j] else None,
                "recall": round(float(true_sel[j] / true_pool[j]), 4) if true_pool[j] else None,
            }
        total_truth = int(with_truth.sum())
        return {
            "policy": self.policy,
            "round": self.layout.index,
            "pool": int(pool.sum()),
            "selected": int(selected.sum()),
            "mask_rate": round(float(selected.sum() / pool.sum()), 4) if pool.sum() else 0.0,
            "precision": round(float(correct.sum() / total_truth), 4) if total_truth else None,
            "has_ground_truth": bool(total_truth),
            "per_class": per_class,
            "steps": {
                name: dict(zip(names, v, strict=True)) for name, v in {"pool_pred": pool.tolist(), **steps}.items()
            },
            "excluded": {
                "leakage": int(excluded[0]),
                "labelled": int(excluded[1]),
                "unknown": int(excluded[2]),
                "disagreement": int(excluded[3]),
                "va_contradiction": int(excluded[4]),
            },
        }
