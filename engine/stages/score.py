"""Score stage: the round's teacher scores every pool sample on a Ray Data actor pool, one parquet per shard.

Pending shards (those without ``score/stats/<shard>.json``) are read with ``ray.data.read_webdataset``; a callable
class loads the teacher once per actor and keeps only the rows of the pool (``PartitionRule``). The driver streams
the scored rows, and as soon as every pool row of a shard has arrived it writes ``part-<shard>.parquet`` and then
``stats/<shard>.json`` (the shard's done marker). Rows are de-duplicated by key, so a retried batch (a killed actor)
never yields a row twice. ``stats.json`` is the sum of the per-shard statistics: what threshold policies read.

Fault tolerance: Ray Data restarts a killed scoring actor and retries its batches (``max_restarts`` and
``max_task_retries`` default to -1 for actor pools); rows of a batch delivered again are dropped by key, and rows of a
shard already committed are ignored. The pool has one actor per CPU (or GPU) by default (``pool_size``); on a
CPU-only cluster it never reserves every CPU (``actor_cpus``), since read tasks starved of CPUs make the job hang
without an error. The dataset's object store budget is ``store_mib_per_actor`` per actor, so reads run only a few
shards ahead and memory stays flat however large the pool.

Teachers with branches (ESR, ensembles) add ``branch_probs`` and a ``disagreement`` column (``score.disagreement``);
teachers with a VA head add ``valence`` and ``arousal``. With ``score.smooth`` set or a sequence teacher
(``model.temporal``), the per-shard parts are first written under ``score/raw/`` (with the backbone ``features`` of
a sequence teacher) and then go through the per-video step (engine.stages.video: rows grouped by manifest ``group``
on Ray Data, ordered by ``frame``: sequence ensemble, then smoothing) into the final ``part-<shard>.parquet``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from engine.config import ScoreConfig
from engine.errors import EngineError
from engine.io import fs
from engine.layout import SourceLayout, join, parse_shard, parse_shard_url
from engine.partition_rule import PartitionRule
from engine.progress import track
from engine.schemas import score_table
from engine.stages.base import RunOutput, Stage, StageContext
from engine.stats import ScoreStats

log = logging.getLogger(__name__)


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
    RAY = False  # a small pool is scored in this process; a larger one starts Ray in _score (ray_started)

    def __init__(self, ctx: StageContext, *, batch_delay_s: float = 0.0) -> None:
        """``batch_delay_s``: test hook, each actor sleeps this long per batch (to kill one mid-run); 0 in use."""
        super().__init__(ctx)
        if ctx.teacher is None:
            raise EngineError(f"{self.label}: no teacher to score with (round 0 has not committed a student)")
        self.root, self.layout, self.cfg = ctx.root, ctx.round_layout, ctx.cfg.score
        self.batch_delay_s = batch_delay_s
        self.teacher_paths, self.teacher_fp = ctx.teacher.paths, ctx.teacher.fingerprint
        self.rule = ctx.rule

    @property
    def out_dir(self) -> str:
        return self.layout.score_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition",)

    def outputs(self) -> tuple[str, ...]:
        return (join(self.out_dir, "part-*.parquet"), join(self.out_dir, "stats"), self.layout.score_stats)

    def resources(self) -> dict[str, float]:
        # One CPU to make progress: the pool fits its actors' CPUs to the cluster (actor_cpus) and takes GPUs only
        # where the cluster has them.
        return {"CPU": 1.0}

    def fingerprint_inputs(self) -> dict[str, Any]:
        fp = {
            "tta_flip": self.cfg.tta_flip,
            "hist_bins": self.cfg.hist_bins,
            "teacher": self.teacher_fp,
            "upstream": {"partition": self.ctx.fingerprint_of("partition")},
            "disagreement": self.cfg.disagreement,
        }
        if self.cfg.smooth is not None:
            fp["smooth"] = {"method": self.cfg.smooth, "window": self.cfg.smooth_window}
        if self.cfg.flip_views:  # only when on: campaigns from before the key keep their fingerprints
            fp["flip_views"] = True
        return fp

    @functools.cached_property
    def sequence(self) -> str | None:
        """The teacher checkpoint when it carries sequence members (``model.temporal``), else None."""
        from engine.models.checkpoint import read_checkpoint_meta

        if len(self.teacher_paths) != 1:
            return None
        return self.teacher_paths[0] if read_checkpoint_meta(self.teacher_paths[0])["model"].get("temporal") else None

    @property
    def video_step(self) -> bool:
        """Whether raw teacher outputs go through the per-video step (sequence ensemble and / or smoothing)."""
        return self.cfg.smooth is not None or self.sequence is not None

    @property
    def raw_dir(self) -> str:
        """Where the per-shard teacher outputs go: ``score/raw`` when the video step follows, else ``score``."""
        return join(self.out_dir, "raw") if self.video_step else self.out_dir

    def stats_path(self, shard: str) -> str:
        return join(self.out_dir, "stats", f"{shard}.json")

    def raw_stats_path(self, shard: str) -> str:
        """Done marker of a shard's teacher outputs (the final stats path when smoothing is off)."""
        return join(self.raw_dir, "stats", f"{shard}.json")

    def raw_part(self, shard: str) -> str:
        """The teacher outputs of a shard (the final part when smoothing is off)."""
        return join(self.raw_dir, f"part-{shard}.parquet")

    def run(self) -> RunOutput:
        t0 = time.perf_counter()
        shards = list_shards(self.root, self.rule.pool_sources)
        labelled = frozenset(self.rule.labelled_keys())
        pending = [s for s in shards if not fs.exists(self.raw_stats_path(s.name))]
        # Pool rows per pending shard: counts only, so the driver's memory does not grow with the pool (a shard's
        # keys are read again when it is committed, from its manifest part).
        expected = {s.name: len(pool_keys(self.rule, s, labelled)) for s in pending}
        to_read = [s for s in pending if expected[s.name]]
        for s in pending:
            if not expected[s.name]:
                self._commit(s.name, {}, 0)
        scored = 0
        if to_read:
            rows = sum(expected[s.name] for s in to_read)
            if self.here(rows):
                log.info(
                    "%s: scoring %d/%d shards (%d rows) in this process (score.in_process_rows=%d)",
                    self.label,
                    len(to_read),
                    len(shards),
                    rows,
                    self.cfg.in_process_rows,
                )
                scored = self._score_here(to_read, labelled)
            else:
                log.info("%s: scoring %d/%d shards", self.label, len(to_read), len(shards))
                scored = self._score(to_read, expected, labelled)
        if self.video_step and any(not fs.exists(self.stats_path(s.name)) for s in shards):
            from engine.stages.video import video_step

            n_video = video_step(
                [{"shard": s.name, "raw": self.raw_part(s.name), "manifest": s.manifest} for s in shards],
                out_dir=self.out_dir,
                cfg=self.cfg,
                sequence=self.sequence,
            )
            log.info(
                "%s: video step over %d video rows (sequence members: %s, smoothing: %s, window %d)",
                self.label,
                n_video,
                self.sequence is not None,
                self.cfg.smooth,
                self.cfg.smooth_window,
            )
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

    def here(self, rows: int) -> bool:
        """Whether ``rows`` pool rows are scored in this process (``score.in_process_rows``, CPU, no cluster)."""
        from engine.runtime import local_work

        return rows <= self.cfg.in_process_rows and self.cfg.gpus_per_actor == 0 and local_work()

    def scorer_kwargs(self) -> dict[str, Any]:
        """The :class:`PoolScorer` of this stage, as keyword arguments (an actor's and the in-process scorer's)."""
        return {
            "teacher_paths": self.teacher_paths,
            "tta_flip": self.cfg.tta_flip,
            "flip_views": self.cfg.flip_views,
            "threads": max(1, int(np.ceil(self.cfg.cpus_per_actor))),
            "use_gpu": False,
            "rule": self.rule.to_json(),
            "delay_s": self.batch_delay_s,
        }

    def _score_here(self, shards: list[ShardRef], labelled: frozenset[str]) -> int:
        """Score ``shards`` in this process: one :class:`PoolScorer` with a torch thread per core (the driver's thread
        count given back after), each shard's pool rows in ``batch_size`` chunks, committed shard by shard as on Ray.
        A row's probabilities do not depend on its batch or the thread count (torch's CPU kernels reduce each output
        in one thread; tests/integration/test_score.py compares the bytes with the actor pool's)."""
        import torch

        from engine.io.tars import read_images
        from engine.runtime import local_cores

        threads = torch.get_num_threads()
        done, teacher_id = 0, self.teacher_fp[:12]
        try:
            scorer = PoolScorer(**{**self.scorer_kwargs(), "threads": local_cores()})
            for s in track(shards, desc=self.label, total=len(shards), unit="shards"):
                keys = pool_keys(self.rule, s, labelled)
                images = read_images(s.tar, set(keys))
                if len(images) < len(keys):
                    missing = sorted(set(keys) - set(images))
                    raise RuntimeError(
                        f"{self.label}: shard {s.name} lacks {len(missing)} pool image(s) of its manifest, e.g. "
                        f"{missing[:3]}; re-run its source's ingest with storage.on_existing=overwrite"
                    )
                buf = _ShardBuffer()
                step = self.cfg.batch_size
                for i in range(0, len(keys), step):
                    chunk = keys[i : i + step]
                    names = np.full(len(chunk), s.name, dtype=object)
                    out = scorer.predict(np.array(chunk, dtype=object), names, [images[k] for k in chunk])
                    buf.add(out, np.arange(len(chunk)))
                self._commit(s.name, buf.columns(), 0, teacher_id)
                done += len(keys)
        finally:
            torch.set_num_threads(threads)
        return done

    def _score(self, shards: list[ShardRef], expected: dict[str, int], labelled: frozenset[str]) -> int:
        from engine.runtime import cluster_cpus, cluster_gpus, ray_started, require

        ray = ray_started()
        require(self.label, self.resources())
        n_cpus, n_gpus = cluster_cpus(), cluster_gpus()
        gpus = self.cfg.gpus_per_actor if n_gpus > 0 else 0.0
        actors = pool_size(self.cfg, n_cpus, n_gpus)
        ds = ray.data.read_webdataset(
            [s.tar for s in shards],
            decoder=None,
            override_num_blocks=len(shards),
            num_cpus=READ_CPUS,
        )
        scored_ds = ds.map_batches(
            PoolScorer,
            fn_constructor_kwargs={**self.scorer_kwargs(), "use_gpu": gpus > 0},
            batch_size=self.cfg.batch_size,
            batch_format="numpy",
            # An autoscaling pool (1..actors) that starts all of them at once: a fixed-size pool that no longer fits
            # the CPUs left after a node is lost waits forever; this one goes on with the actors that fit.
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
            num_cpus=actor_cpus(self.cfg, actors, n_cpus, gpus),
            num_gpus=gpus,
        )
        if self.cfg.store_mib_per_actor:
            opts = scored_ds.context.execution_options
            opts.resource_limits = opts.resource_limits.copy(
                object_store_memory=actors * self.cfg.store_mib_per_actor * 2**20
            )
        by_name = {s.name: s for s in shards}
        buffers: dict[str, _ShardBuffer] = {}
        committed: set[str] = set()
        done = 0
        teacher_id = self.teacher_fp[:12]
        batches = track(
            scored_ds.iter_batches(batch_size=None, batch_format="numpy"),
            desc=self.label,
            total=sum(expected[s.name] for s in shards),
            count=lambda b: len(b["shard"]),
        )
        for batch in batches:
            shard_col = batch["shard"]
            for shard in dict.fromkeys(shard_col.tolist()):  # a batch rarely spans more than one shard
                if shard in committed:  # a batch delivered again after its shard was written: nothing new
                    continue
                buf = buffers.setdefault(shard, _ShardBuffer())
                buf.add(batch, np.flatnonzero(shard_col == shard))
                if len(buf.seen) < expected[shard]:
                    continue
                keys = set(pool_keys(self.rule, by_name[shard], labelled))
                if buf.seen != keys:
                    raise RuntimeError(
                        f"{self.label}: shard {shard} got keys outside its pool, e.g. "
                        f"{sorted(buf.seen - keys)[:3]}; delete {self.out_dir} and re-run"
                    )
                self._commit(shard, buffers.pop(shard).columns(), 0, teacher_id)
                committed.add(shard)
                done += expected[shard]
        if buffers:
            raise RuntimeError(f"{self.label}: incomplete shards after scoring: {sorted(buffers)[:5]}; re-run")
        return done

    def _commit(self, shard: str, rows: dict[str, np.ndarray], _: int = 0, teacher_id: str = "") -> None:
        """Write one shard's part (rows sorted by key) and then its stats file, the shard's done marker.

        Args:
            rows: column arrays ``key`` (N,), ``probs`` (N, C), optional ``branch_probs`` (N, M, C) and ``va``
                (N, 2); an empty dict commits a shard without pool rows.
        """
        if rows:
            order = np.argsort(rows["key"], kind="stable")
            probs = rows["probs"][order].astype(np.float32)
            table = score_table(
                [str(k) for k in rows["key"][order]],
                shard,
                probs,
                teacher_id,
                branch_probs=rows["branch_probs"][order] if "branch_probs" in rows else None,
                va=rows["va"][order] if "va" in rows else None,
                features=rows["features"][order] if "features" in rows else None,
                disagreement=self.cfg.disagreement,
            )
            fs.write_parquet(self.raw_part(shard), table)
            stats: dict[str, Any] = ScoreStats.from_probs(probs, self.cfg.hist_bins).to_json()
        else:
            stats = {"n": 0}
        fs.write_json(self.raw_stats_path(shard), stats)


def pool_size(cfg: ScoreConfig, cluster_cpus: int, cluster_gpus: int) -> int:
    """Scoring actors: ``num_actors``, or when it is 0 one per ``gpus_per_actor`` GPUs of a GPU cluster, else one per
    ``cpus_per_actor`` CPUs (at least one)."""
    if cfg.num_actors:
        return cfg.num_actors
    if cluster_gpus > 0 and cfg.gpus_per_actor > 0:
        return max(1, int(cluster_gpus / cfg.gpus_per_actor))
    return max(1, int(cluster_cpus / max(cfg.cpus_per_actor, 1e-9)))


READ_CPUS = 0.25
"""CPUs a shard read task reserves: it only streams a tar's members to the actors (decoding is the actors' work)."""


def actor_cpus(cfg: ScoreConfig, actors: int, cluster_cpus: int, gpus: float) -> float:
    """CPUs each of ``actors`` scoring actors reserves on a CPU-only cluster: ``cpus_per_actor`` when the pool leaves
    room for a read task, else at most (1 - READ_CPUS) of it, so that every node full of actors still fits one read
    (a pool holding every CPU starves the reads and the job hangs without error). Torch threads per actor stay
    ``ceil(cpus_per_actor)``, so scores do not depend on the pool's size or placement."""
    want = cfg.cpus_per_actor
    if gpus > 0 or actors * want + READ_CPUS <= cluster_cpus:
        return want
    fitted = min(want * (1 - READ_CPUS), (cluster_cpus - READ_CPUS) / actors)
    (log.info if cfg.num_actors == 0 else log.warning)(
        "score: %d actors x %.2g CPUs would leave no CPU to the shard reads on %d CPUs; reserving %.2g CPUs per "
        "actor (torch threads stay %d)",
        actors,
        want,
        cluster_cpus,
        fitted,
        max(1, int(np.ceil(want))),
    )
    return fitted


class _ShardBuffer:
    """Scored rows of one shard collected on the driver, each key once (a retried batch adds nothing)."""

    COLUMNS = ("key", "probs", "branch_probs", "va", "features")

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(self, batch: dict[str, np.ndarray], idx: np.ndarray) -> None:
        keys = batch["key"][idx]
        new = np.fromiter((k not in self.seen for k in keys), dtype=bool, count=len(keys))
        if not new.any():
            return
        self.seen.update(keys[new].tolist())
        for col in self.COLUMNS:
            if col in batch:
                self.parts[col].append(batch[col][idx[new]])

    def columns(self) -> dict[str, np.ndarray]:
        return {col: np.concatenate(parts) for col, parts in self.parts.items()}


class PoolScorer:
    """Ray Data actor: loads the teacher once, keeps the pool rows of each batch, returns their probabilities."""

    def __init__(
        self,
        teacher_paths: tuple[str, ...],
        tta_flip: bool,
        threads: int,
        use_gpu: bool,
        rule: dict[str, Any],
        delay_s: float = 0.0,
        flip_views: bool = False,
    ) -> None:
        import torch

        from engine.models.teacher import load_teacher

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel op of the process
            torch.set_num_interop_threads(1)
        device = "cuda" if use_gpu else "cpu"
        self.teacher = load_teacher(list(teacher_paths), tta_flip=tta_flip, flip_views=flip_views, device=device)
        self.rule = PartitionRule.from_json(rule)
        self.labelled = frozenset(self.rule.labelled_keys())
        self.delay_s = delay_s
        self._members: OrderedDict[str, set[str]] = OrderedDict()

    MEMBER_SHARDS = 16
    """Pool key sets an actor keeps (the shards it saw last): batches come from the few tars being read at a time,
    and a set per shard ever seen would grow the actor's memory with the pool (1M keys: over 100 MB)."""

    def _pool(self, url: str) -> tuple[str, set[str]]:
        root, name = parse_shard_url(url)
        if name in self._members:
            self._members.move_to_end(name)
        else:
            source, idx = parse_shard(name)
            lay = SourceLayout(root, source)
            ref = ShardRef(source, idx, name, url, lay.manifest_part(idx))
            self._members[name] = set(pool_keys(self.rule, ref, self.labelled))
            while len(self._members) > self.MEMBER_SHARDS:
                self._members.popitem(last=False)
        return name, self._members[name]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows ``key``, ``shard``, ``probs`` (N, C) float32 (+ ``branch_probs``, ``va``) of the batch's pool rows."""
        image_col = next(c for c in ("png", "jpg", "jpeg") if c in batch)
        urls, keys = batch["__url__"], batch["__key__"]
        keep = np.zeros(len(keys), dtype=bool)
        shards = np.empty(len(keys), dtype=object)
        for url in dict.fromkeys(urls.tolist()):  # one or two tars per batch
            rows = np.flatnonzero(urls == url)
            shard, members = self._pool(str(url))
            keep[rows] = np.fromiter((k in members for k in keys[rows]), dtype=bool, count=len(rows))
            shards[rows] = shard
        idx = np.flatnonzero(keep)
        return self.predict(keys[idx], shards[idx], [bytes(batch[image_col][i]) for i in idx])

    def predict(self, keys: np.ndarray, shards: np.ndarray, encoded: list[bytes]) -> dict[str, np.ndarray]:
        """The output rows of the pool images ``encoded`` (with their ``keys`` and ``shards``), as :meth:`__call__`."""
        from engine.imaging import decode_pixels

        images = [decode_pixels(b) for b in encoded]
        if self.delay_s:
            time.sleep(self.delay_s)
        if not images:
            c = len(self.teacher.label_space.classes)
            return {"key": keys, "shard": shards, "probs": np.zeros((0, c), np.float32)}
        same_shape = len({im.shape for im in images}) == 1
        out = self.teacher.predict(np.stack(images) if same_shape else images)
        result = {"key": keys, "shard": shards, "probs": out.probs}
        if out.branch_probs is not None:
            result["branch_probs"] = out.branch_probs
        if out.va is not None:
            result["va"] = out.va
        if out.features is not None:
            result["features"] = out.features
        return result
