"""Select stage: thresholds → the round's pseudo-labelled set, class-balanced and leakage-guarded.

Distributed over the score parts in two passes, so the driver never holds the score tables:

1. per shard (Ray Data task): drop rows the guard forbids (leakage flag, labelled key, unknown to the manifest),
   apply the per-class threshold and return a sparse per-class histogram of the passing confidences, plus the hidden
   ground-truth counts of the pool where the manifest has labels;
2. the driver turns the summed histograms into per-class quotas (absolute cap, multiple of the labelled count, the
   unlabelled:labelled ratio cap) and a per-class cut; the rows inside the cut's boundary bin are fetched (only those)
   and ordered by (confidence desc, key) so the result is exact and deterministic;
3. per shard (Ray Data task): write the kept rows of the shard; the driver streams the parts into
   ``selection.parquet``. Sparse classes are repeated up to ``floor_per_class`` (column ``repeat``, Noisy Student).

``quality.json`` holds per-class precision and recall of the pseudo-labels where hidden labels exist, and the mask
rate; counts before and after each rule are in ``_SUCCESS.json`` and ``quality.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.config import SelectConfig
from engine.io import fs
from engine.layout import RoundLayout, join
from engine.stages.base import RunOutput, Stage

log = logging.getLogger(__name__)

HIST_BINS = 1 << 16

SELECTION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("label", pa.int16()),
        ("conf", pa.float32()),
        ("weight", pa.float32()),
        ("repeat", pa.int16()),
        ("policy", pa.string()),
        ("round", pa.int16()),
    ]
)


def conf_bin(conf: np.ndarray) -> np.ndarray:
    """Fine histogram bin of each confidence (same function in both passes)."""
    return np.minimum((conf.astype(np.float64) * HIST_BINS).astype(np.int64), HIST_BINS - 1)


def _guarded(part: str, manifest: str, labelled: frozenset[str], thresholds: np.ndarray) -> dict[str, Any]:
    """Score rows of one shard with the guard applied: arrays key, pred, conf, passing mask, true label."""
    s = fs.read_parquet(part, columns=["key", "pred", "conf"])
    m = fs.read_parquet(manifest, columns=["key", "label", "leak_with"])
    m_idx = {k: i for i, k in enumerate(m["key"].to_pylist())}
    keys = s["key"].to_pylist()
    pos = np.array([m_idx.get(k, -1) for k in keys], dtype=np.int64)
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
    }


def _pass1(
    item: dict[str, Any],
    *,
    labelled: frozenset[str],
    thresholds: np.ndarray,
    num_classes: int,
) -> dict[str, Any]:
    g = _guarded(item["part"], item["manifest"], labelled, thresholds)
    pred, conf, passing, allowed, true = g["pred"], g["conf"], g["passing"], g["allowed"], g["true"]
    flat = pred[passing] * HIST_BINS + conf_bin(conf[passing])
    uniq, cnt = np.unique(flat, return_counts=True)
    return {
        "hist_idx": uniq,
        "hist_cnt": cnt,
        "pool": np.bincount(pred[allowed], minlength=num_classes),
        "true_pool": np.bincount(true[allowed & (true >= 0)], minlength=num_classes),
        "excluded": np.array([g["leak"], g["labelled"], g["unknown"]], dtype=np.int64),
    }


def _boundary(
    item: dict[str, Any],
    *,
    labelled: frozenset[str],
    thresholds: np.ndarray,
    cut_bin: np.ndarray,
) -> dict[str, Any]:
    """Rows of one shard that sit exactly in their class's boundary bin."""
    g = _guarded(item["part"], item["manifest"], labelled, thresholds)
    b = conf_bin(g["conf"])
    sel = g["passing"] & (b == cut_bin[g["pred"]])
    idx = np.flatnonzero(sel)
    return {"keys": [g["keys"][i] for i in idx], "pred": g["pred"][idx], "conf": g["conf"][idx]}


def _pass2(
    item: dict[str, Any],
    *,
    labelled: frozenset[str],
    thresholds: np.ndarray,
    cut_bin: np.ndarray,
    boundary_keys: frozenset[str],
    repeat: np.ndarray,
    weight: float,
    policy: str,
    round_index: int,
    out_dir: str,
    num_classes: int,
) -> dict[str, Any]:
    g = _guarded(item["part"], item["manifest"], labelled, thresholds)
    pred, conf, passing, true = g["pred"], g["conf"], g["passing"], g["true"]
    b = conf_bin(conf)
    keep = passing & ((b > cut_bin[pred]) | ((b == cut_bin[pred]) & np.array([k in boundary_keys for k in g["keys"]])))
    idx = np.flatnonzero(keep)
    keys = [g["keys"][i] for i in idx]
    order = np.argsort(np.array(keys, dtype=object), kind="stable") if keys else np.array([], dtype=np.int64)
    idx = idx[order]
    table = pa.table(
        {
            "key": [g["keys"][i] for i in idx],
            "shard": [item["shard"]] * len(idx),
            "label": pred[idx].astype(np.int16),
            "conf": conf[idx],
            "weight": np.full(len(idx), weight, dtype=np.float32),
            "repeat": repeat[pred[idx]].astype(np.int16),
            "policy": [policy] * len(idx),
            "round": np.full(len(idx), round_index, dtype=np.int16),
        },
        schema=SELECTION_SCHEMA,
    )
    path = join(out_dir, "parts", f"part-{item['shard']}.parquet")
    fs.write_parquet(path, table)
    sel_true = true[idx]
    has = sel_true >= 0
    return {
        "path": path,
        "selected": np.bincount(pred[idx], minlength=num_classes),
        "with_truth": np.bincount(pred[idx][has], minlength=num_classes),
        "correct": np.bincount(pred[idx][has & (sel_true == pred[idx])], minlength=num_classes),
        "true_selected": np.bincount(sel_true[has & (sel_true == pred[idx])], minlength=num_classes),
    }


def quotas(
    passing: np.ndarray, labelled_counts: np.ndarray, cfg: SelectConfig
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Per-class number of rows to keep after the caps, and the per-class counts after each rule."""
    k = passing.astype(np.int64).copy()
    steps: dict[str, list[int]] = {"passed_threshold": k.tolist()}
    if cfg.cap_per_class is not None:
        k = np.minimum(k, cfg.cap_per_class)
    if cfg.cap_multiple_of_labelled is not None:
        k = np.minimum(k, np.floor(cfg.cap_multiple_of_labelled * labelled_counts).astype(np.int64))
    steps["after_class_caps"] = k.tolist()
    if cfg.max_unlabelled_ratio is not None:
        limit = math.floor(cfg.max_unlabelled_ratio * int(labelled_counts.sum()))
        if k.sum() > limit:
            k = np.floor(k * (limit / k.sum())).astype(np.int64)
    steps["after_ratio_cap"] = k.tolist()
    return k, steps


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


class SelectStage(Stage):
    """Apply thresholds, caps, the ratio cap, duplication of sparse classes and the leakage guard."""

    name = "select"
    VERSION = 1

    def __init__(
        self,
        round_layout: RoundLayout,
        cfg: SelectConfig,
        *,
        items: list[dict[str, Any]],
        thresholds: np.ndarray,
        labelled_counts: np.ndarray,
        labelled_keys: frozenset[str],
        policy: str,
        class_names: list[str],
        upstream: dict[str, str],
        on_existing: str = "error",
    ) -> None:
        super().__init__(round_layout.select_dir, on_existing=on_existing, label=f"select r{round_layout.index:03d}")
        self.layout, self.cfg, self.items = round_layout, cfg, items
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.labelled_counts = np.asarray(labelled_counts, dtype=np.int64)
        self.labelled_keys, self.policy, self.names, self.upstream = labelled_keys, policy, class_names, upstream

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {"select": asdict(self.cfg), "upstream": self.upstream}

    def run(self) -> RunOutput:
        import ray

        c = len(self.names)
        common = {"labelled": self.labelled_keys, "thresholds": self.thresholds}
        items = ray.data.from_items(self.items, override_num_blocks=max(1, len(self.items)))
        hist = np.zeros((c, HIST_BINS), dtype=np.int64)
        pool = np.zeros(c, dtype=np.int64)
        true_pool = np.zeros(c, dtype=np.int64)
        excluded = np.zeros(3, dtype=np.int64)
        for r in items.map(_pass1, fn_kwargs={**common, "num_classes": c}).iter_rows():
            idx = np.asarray(r["hist_idx"], dtype=np.int64)
            hist.reshape(-1)[idx] += np.asarray(r["hist_cnt"], dtype=np.int64)
            pool += r["pool"]
            true_pool += r["true_pool"]
            excluded += r["excluded"]
        passing = hist.sum(1)
        k, steps = quotas(passing, self.labelled_counts, self.cfg)
        cut, take = cut_bins(hist, k)
        boundary: list[tuple[float, str, int]] = []
        if (take > 0).any():
            for r in items.map(_boundary, fn_kwargs={**common, "cut_bin": cut}).iter_rows():
                boundary += [
                    (-float(cf), str(key), int(p)) for key, p, cf in zip(r["keys"], r["pred"], r["conf"], strict=True)
                ]
        boundary.sort()
        chosen: list[str] = []
        for j in range(c):
            chosen += [key for _, key, p in boundary if p == j][: int(take[j])]
        repeat = np.ones(c, dtype=np.int64)
        if self.cfg.floor_per_class > 0:
            repeat = np.where(
                (k > 0) & (k < self.cfg.floor_per_class), np.ceil(self.cfg.floor_per_class / np.maximum(k, 1)), 1
            ).astype(np.int64)
        steps["after_floor_rows"] = (k * repeat).tolist()
        kwargs = {
            **common,
            "cut_bin": cut,
            "boundary_keys": frozenset(chosen),
            "repeat": repeat,
            "weight": self.cfg.weight,
            "policy": self.policy,
            "round_index": self.layout.index,
            "out_dir": self.out_dir,
            "num_classes": c,
        }
        results = sorted(items.map(_pass2, fn_kwargs=kwargs).iter_rows(), key=lambda r: r["path"])
        selected = np.zeros(c, dtype=np.int64)
        with_truth = np.zeros(c, dtype=np.int64)
        correct = np.zeros(c, dtype=np.int64)
        true_sel = np.zeros(c, dtype=np.int64)
        with fs.atomic_write(self.layout.selection) as f:
            writer = pq.ParquetWriter(f, SELECTION_SCHEMA, compression="zstd")
            for r in results:
                writer.write_table(fs.read_parquet(r["path"]))
                selected += r["selected"]
                with_truth += r["with_truth"]
                correct += r["correct"]
                true_sel += r["true_selected"]
            writer.close()
        fs.remove(join(self.out_dir, "parts"))
        if not np.array_equal(selected, k):
            raise RuntimeError(f"{self.label}: selected {selected.tolist()} != quotas {k.tolist()}")
        quality = self._quality(pool, true_pool, selected, with_truth, correct, true_sel, steps, excluded)
        fs.write_json(self.layout.quality, quality)
        for j in np.flatnonzero((selected == 0) & (pool > 0)):
            log.warning("%s: class %s has no selected sample", self.label, self.names[j])
        return RunOutput(
            counts={
                "pool": int(pool.sum()),
                "selected": int(selected.sum()),
                "rows_with_repeats": int((k * repeat).sum()),
                "excluded_leakage": int(excluded[0]),
                "excluded_labelled": int(excluded[1]),
                "excluded_unknown": int(excluded[2]),
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
            "excluded": {"leakage": int(excluded[0]), "labelled": int(excluded[1]), "unknown": int(excluded[2])},
        }
