"""Score stage: the round's teacher scores every pool sample on a Ray Data actor pool, one parquet per shard.

Pending shards (those without ``score/stats/<shard>.json``) are read with ``ray.data.read_webdataset``; a callable
class loads the teacher once per actor and keeps only the rows of the pool (``PartitionRule``). The driver streams
the scored rows, and as soon as every pool row of a shard has arrived it writes ``part-<shard>.parquet`` and then
``stats/<shard>.json`` (the shard's done marker). Rows are de-duplicated by key, so a retried batch (a killed actor)
never yields a row twice. ``stats.json`` is the sum of the per-shard statistics: what threshold policies read.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import ScoreConfig
from engine.io import fs
from engine.layout import RoundLayout, SourceLayout, join
from engine.partition import PartitionRule
from engine.stages.base import RunOutput, Stage
from engine.stats import ScoreStats

log = logging.getLogger(__name__)


def score_schema(num_classes: int, branches: int = 0) -> pa.Schema:
    """Schema of a score part (DESIGN.md "Schemas")."""
    fields = [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("probs", pa.list_(pa.float32(), num_classes)),
        ("pred", pa.int16()),
        ("conf", pa.float32()),
        ("margin", pa.float32()),
        ("entropy", pa.float32()),
        ("teacher", pa.string()),
    ]
    if branches:
        fields.append(("branch_probs", pa.list_(pa.list_(pa.float32(), num_classes), branches)))
    return pa.schema(fields)


def score_columns(probs: np.ndarray) -> dict[str, np.ndarray]:
    """pred, conf, margin (top-1 minus top-2) and entropy (nats) of probabilities (N, C)."""
    probs = probs.astype(np.float32, copy=False)
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    return {
        "pred": probs.argmax(1).astype(np.int16),
        "conf": top2[:, 1].astype(np.float32),
        "margin": (top2[:, 1] - top2[:, 0]).astype(np.float32),
        "entropy": ent.astype(np.float32),
    }


@dataclass(frozen=True)
class ShardRef:
    """One input shard: its source, index, tar path and manifest part."""

    source: str
    index: int
    name: str
    tar: str
    manifest: str


def list_shards(root: str, sources: tuple[str, ...]) -> list[ShardRef]:
    """Every committed shard of ``sources``, in order."""
    out = []
    for s in sources:
        lay = SourceLayout(root, s)
        marker = fs.read_json(lay.success)
        for i in range(int(marker["counts"]["shards"])):
            out.append(ShardRef(s, i, f"{s}-{i:06d}", lay.shard(i), lay.manifest_part(i)))
    return out


@lru_cache(maxsize=64)
def _manifest_cols(path: str) -> dict[str, list[Any]]:
    t = fs.read_parquet(path, columns=["key", "split", "label", "leak_with"])
    return {c: t[c].to_pylist() for c in t.column_names}


def pool_keys(rule: PartitionRule, shard: ShardRef, labelled: frozenset[str]) -> list[str]:
    """Keys of one shard that belong to the campaign's unlabelled pool."""
    m = _manifest_cols(shard.manifest)
    mask = rule.pool_mask(shard.source, m["key"], m["split"], m["leak_with"], set(labelled))
    return [k for k, keep in zip(m["key"], mask, strict=True) if keep]


class ScoreStage(Stage):
    """Score the pool of one round with one teacher (single checkpoint, ensemble, TTA)."""

    name = "score"
    VERSION = 1

    def __init__(
        self,
        root: str,
        round_layout: RoundLayout,
        cfg: ScoreConfig,
        *,
        teacher_paths: tuple[str, ...],
        teacher_fingerprint: str,
        rule: PartitionRule,
        upstream: dict[str, str],
        on_existing: str = "error",
    ) -> None:
        super().__init__(round_layout.score_dir, on_existing=on_existing, label=f"score r{round_layout.index:03d}")
        self.root, self.layout, self.cfg = root, round_layout, cfg
        self.teacher_paths, self.teacher_fp, self.rule, self.upstream = (
            teacher_paths,
            teacher_fingerprint,
            rule,
            upstream,
        )

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {
            "tta_flip": self.cfg.tta_flip,
            "hist_bins": self.cfg.hist_bins,
            "teacher": self.teacher_fp,
            "upstream": self.upstream,
        }

    def stats_path(self, shard: str) -> str:
        return join(self.out_dir, "stats", f"{shard}.json")

    def run(self) -> RunOutput:
        t0 = time.perf_counter()
        shards = list_shards(self.root, self.rule.pool_sources)
        labelled = frozenset(self.rule.labelled_keys())
        pending = [s for s in shards if not fs.exists(self.stats_path(s.name))]
        expected = {s.name: set(pool_keys(self.rule, s, labelled)) for s in pending}
        to_read = [s for s in pending if expected[s.name]]
        for s in pending:
            if not expected[s.name]:
                self._commit(s.name, {}, 0)
        scored = 0
        if to_read:
            log.info("%s: scoring %d/%d shards", self.label, len(to_read), len(shards))
            scored = self._score(to_read, expected)
        total: ScoreStats | None = None
        for s in shards:
            d = fs.read_json(self.stats_path(s.name))
            if d.get("n"):
                st = ScoreStats.from_json(d)
                total = st if total is None else total + st
        if total is None:
            raise RuntimeError(f"{self.label}: the pool is empty; check campaign.unlabelled and the partition")
        fs.write_json(self.layout.score_stats, total.to_json())
        seconds = time.perf_counter() - t0
        return RunOutput(
            counts={
                "rows": int(total.n),
                "shards": len(shards),
                "scored_now": scored,
                "images_per_s": round(scored / max(seconds, 1e-9), 1),
            },
            extra={"pred_counts": [int(x) for x in total.pred_counts]},
        )

    def _score(self, shards: list[ShardRef], expected: dict[str, set[str]]) -> int:
        import ray

        from engine.runtime import cluster_gpus

        gpus = self.cfg.gpus_per_actor if cluster_gpus() > 0 else 0.0
        ds = ray.data.read_webdataset([s.tar for s in shards], decoder=None, override_num_blocks=len(shards))
        scored_ds = ds.map_batches(
            PoolScorer,
            fn_constructor_kwargs={
                "teacher_paths": self.teacher_paths,
                "tta_flip": self.cfg.tta_flip,
                "threads": max(1, int(np.ceil(self.cfg.cpus_per_actor))),
                "use_gpu": gpus > 0,
                "rule": self.rule.to_json(),
            },
            batch_size=self.cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.cfg.num_actors),
            num_cpus=self.cfg.cpus_per_actor,
            num_gpus=gpus,
        )
        buffers: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        done = 0
        teacher_id = self.teacher_fp[:12]
        for batch in scored_ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, key in enumerate(batch["key"]):
                shard = str(batch["shard"][i])
                buffers[shard][str(key)] = {
                    "probs": batch["probs"][i],
                    **({"branch_probs": batch["branch_probs"][i]} if "branch_probs" in batch else {}),
                }
            for shard in [s for s, rows in buffers.items() if len(rows) >= len(expected[s])]:
                rows = buffers.pop(shard)
                missing = expected[shard] - rows.keys()
                if missing:
                    raise RuntimeError(
                        f"{self.label}: shard {shard} got unexpected keys; missing {sorted(missing)[:3]}"
                    )
                self._commit(shard, rows, 0, teacher_id)
                done += len(rows)
        if buffers:
            raise RuntimeError(f"{self.label}: incomplete shards after scoring: {sorted(buffers)[:5]}")
        return done

    def _commit(self, shard: str, rows: dict[str, dict[str, Any]], _: int, teacher_id: str = "") -> None:
        keys = sorted(rows)
        if keys:
            probs = np.stack([rows[k]["probs"] for k in keys]).astype(np.float32)
            c = probs.shape[1]
            cols = score_columns(probs)
            data: dict[str, Any] = {
                "key": keys,
                "shard": [shard] * len(keys),
                "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), c),
                **cols,
                "teacher": [teacher_id] * len(keys),
            }
            branches = 0
            if "branch_probs" in rows[keys[0]]:
                bp = np.stack([rows[k]["branch_probs"] for k in keys]).astype(np.float32)
                branches = bp.shape[1]
                inner = pa.FixedSizeListArray.from_arrays(pa.array(bp.ravel()), c)
                data["branch_probs"] = pa.FixedSizeListArray.from_arrays(inner, branches)
            table = pa.table(data, schema=score_schema(c, branches))
            stats = ScoreStats.from_probs(probs, self.cfg.hist_bins)
        else:
            table, stats = None, None
        if table is not None:
            fs.write_parquet(self.layout.score_part(shard), table)
        fs.write_json(self.stats_path(shard), stats.to_json() if stats is not None else {"n": 0})


class PoolScorer:
    """Ray Data actor: loads the teacher once, keeps pool rows, returns their probabilities."""

    def __init__(
        self, teacher_paths: tuple[str, ...], tta_flip: bool, threads: int, use_gpu: bool, rule: dict[str, Any]
    ) -> None:
        import torch

        from engine.models.teacher import load_teacher

        torch.set_num_threads(threads)
        self.teacher = load_teacher(list(teacher_paths), tta_flip=tta_flip, device="cuda" if use_gpu else "cpu")
        self.rule = PartitionRule.from_json(rule)
        self.labelled = frozenset(self.rule.labelled_keys())
        self._members: dict[str, set[str]] = {}

    def _pool(self, url: str) -> tuple[str, set[str]]:
        name = url.rsplit("/", 1)[-1].removesuffix(".tar")
        if name not in self._members:
            source, idx = name.rsplit("-", 1)
            lay = SourceLayout(url.rsplit("/sources/", 1)[0], source)
            ref = ShardRef(source, int(idx), name, url, lay.manifest_part(int(idx)))
            self._members[name] = set(pool_keys(self.rule, ref, self.labelled))
        return name, self._members[name]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from engine.imaging import decode_pixels

        image_col = next(c for c in ("png", "jpg", "jpeg") if c in batch)
        keys, shards, images = [], [], []
        for key, url, data in zip(batch["__key__"], batch["__url__"], batch[image_col], strict=True):
            shard, members = self._pool(str(url))
            if str(key) in members:
                keys.append(str(key))
                shards.append(shard)
                images.append(decode_pixels(bytes(data)))
        c = len(self.teacher.label_space.classes)
        if not images:
            return {
                "key": np.array([], dtype=object),
                "shard": np.array([], dtype=object),
                "probs": np.zeros((0, c), np.float32),
            }
        out = self.teacher.predict(images)
        result = {"key": np.array(keys, dtype=object), "shard": np.array(shards, dtype=object), "probs": out.probs}
        if out.branch_probs is not None:
            result["branch_probs"] = out.branch_probs
        return result
