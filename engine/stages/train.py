"""Train stage: the round's student on labelled ∪ selected samples (Ray Train underneath, resumable)."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import fingerprint_fields, model_fingerprint_fields, same_architecture
from engine.fingerprint import fingerprint, short
from engine.io import fs
from engine.io.checksums import check_dir
from engine.layout import SUCCESS, join, root_path, stored_path, student_index
from engine.partition_rule import PartitionRule
from engine.stages.base import RunOutput, Stage, StageContext, StageResult

TRAINED_COLUMNS = ("key", "shard", "label", "weight", "repeat")
"""The columns of a labelled set or a selection that training reads (engine.samples): their content, not the file's
bytes (a selection also records the policy that made it), tells what a student learnt from."""


def trained_digest(path: str) -> str:
    """sha256 of the :data:`TRAINED_COLUMNS` of a (key, shard, label[, weight, repeat]) table, rows by key."""
    t = fs.read_parquet(path)
    t = t.select([c for c in TRAINED_COLUMNS if c in t.column_names]).sort_by("key")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as writer:
        writer.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


logger = logging.getLogger(__name__)


class TrainStage(Stage):
    """Train a student and write ``train/student.pt`` (engine checkpoint format)."""

    name = "train"
    VERSION = 1

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg.for_round(ctx.round or 0)  # from round 1 on, the student.* keys apply
        self.root, self.layout, self.space = ctx.root, ctx.round_layout, ctx.space
        self.train_cfg, self.model_cfg, self.threshold_cfg = cfg.train, cfg.model, cfg.threshold
        self.campaign, self.mlflow = cfg.campaign.name, ctx.tracking
        self.init_checkpoint = self._warm_start_from(ctx)

    def _warm_start_from(self, ctx: StageContext) -> str | None:
        """The checkpoint the student starts from, None for a fresh net: the teacher's when the student starts from
        its weights (``train.warm_start`` and, for a teacher of this campaign, the same architecture: a larger
        student of ``student.model`` starts afresh, as in Noisy Student; an outside teacher,
        ``campaign.teacher_checkpoint``, is checked against the student when its weights load); else, in a campaign
        with a pretraining, the pretrained net (engine/stages/pretrain.py) for every student of round 0's
        architecture (round 0's and its members included)."""
        t = ctx.teacher
        if t and self.train_cfg.warm_start:
            if t.round < 0 or same_architecture(ctx.cfg.for_round(t.round).model, self.model_cfg):
                return t.paths[0]
            logger.info(
                "train r%03d: the student's model section differs from its teacher's (round %d): not warm-started",
                ctx.round,
                t.round,
            )
        return self._pretrained_net(ctx)

    def _pretrained_net(self, ctx: StageContext) -> str | None:
        """The pretraining's net when the campaign has one and the student has round 0's architecture, else None."""
        if "pretrain" not in ctx.upstream or not same_architecture(ctx.cfg.model, self.model_cfg):
            return None
        return root_path(ctx.root, ctx.upstream["pretrain"].extra["checkpoint"])

    @property
    def out_dir(self) -> str:
        return self.layout.train_dir

    def inputs(self) -> tuple[str, ...]:
        return ("partition",)

    @property
    def student_path(self) -> str:
        """The checkpoint this stage writes."""
        return join(self.out_dir, "student.pt")

    def outputs(self) -> tuple[str, ...]:
        return (self.student_path, join(self.out_dir, "ray"))

    def resources(self) -> dict[str, float]:
        t = self.train_cfg
        return {"CPU": float(t.num_workers), "GPU": float(t.num_workers if t.use_gpu else 0)}

    @property
    def labelled_path(self) -> str:
        return self.ctx.labelled_path

    @property
    def selection_path(self) -> str | None:
        """The round's committed selection, None in round 0 or when it selected nothing."""
        select = self.ctx.upstream.get("select")
        return self.layout.selection if select is not None and select.counts.get("selected") else None

    @property
    def upstream(self) -> dict[str, str]:
        """The upstream digests the student depends on: the selection (rounds > 0), the partition, people's answers
        (``reviewed``) when a batch was answered, the pretraining it starts from (round 0) and the teacher when the
        student starts from its weights."""
        up = {"partition": self.ctx.fingerprint_of("partition")}
        for name in ("reviewed", "select"):  # reviewed: people's answers (absent from earlier campaigns' prints)
            if name in self.ctx.upstream:
                up[name] = self.ctx.fingerprint_of(name)
        teacher = self.ctx.teacher
        if self.pretrained:  # absent from earlier campaigns' prints
            up["pretrain"] = self.ctx.fingerprint_of("pretrain")
        warm = teacher is not None and self.init_checkpoint is not None and not self.pretrained
        return {**up, "teacher": teacher.fingerprint if (teacher and warm) else ""}

    @property
    def pretrained(self) -> bool:
        """Whether the student starts from the campaign's pretrained net (not from a teacher's weights)."""
        return self.init_checkpoint is not None and self.init_checkpoint == self._pretrained_net(self.ctx)

    @property
    def distills(self) -> bool:
        """Whether the student learns the teacher's probabilities on the whole scored pool (``train.distill`` in a
        round that scored one; round 0 has no teacher to distil)."""
        return self.train_cfg.distill and "score" in self.ctx.upstream

    def fingerprint_inputs(self) -> dict[str, Any]:
        train = fingerprint_fields("train", self.train_cfg)
        del train["in_process"]  # where the loop runs, not what it computes (the same student, bit for bit)
        if not self.distills:  # without a scored pool the distillation keys change nothing
            for key in ("distill", "distill_temperature", "distill_weight"):
                train.pop(key, None)
        fp: dict[str, Any] = {
            "train": train,
            "model": model_fingerprint_fields(self.model_cfg),
            "label_space": self.space.name,
            "upstream": self.upstream,
        }
        if self.train_cfg.online_policy:
            fp["online_threshold"] = fingerprint_fields("threshold", self.threshold_cfg)
        return fp

    @functools.cached_property
    def content_key(self) -> str:
        """What the student is made of, by content: the training config and model (the fingerprint's fields), the
        partition rule's splits (the val rows ``select_best`` reads), the labelled set's and the selection's trained
        columns, the score stage's files when the student learns the teacher's probabilities (soft labels) and the
        teacher when it starts from its weights. Two train stages with the same key train the same student, whatever
        config made their inputs (two threshold policies that select the same rows, another campaign of the same
        store): the second copies the first's ``student.pt`` instead of training (``<root>/index/students/``)."""
        inputs = self.fingerprint_inputs()
        del inputs["upstream"]
        rule = {k: v for k, v in asdict(self.ctx.rule).items() if k != "labelled_keys_path"}
        soft = (self.selection_path is not None and self.train_cfg.soft_labels) or self.distills
        return fingerprint(
            "student",
            self.VERSION,
            {
                **inputs,
                "rule": rule,
                "labelled": trained_digest(self.labelled_path),
                "selection": trained_digest(self.selection_path) if self.selection_path else "",
                "soft_targets": self._score_digest() if soft else "",
                "teacher": self.upstream["teacher"],
                **({"pretrain": self.upstream["pretrain"]} if self.pretrained else {}),
            },
        )

    def _score_digest(self) -> str:
        """sha256 of the score stage's committed files (their sha256 from its ``_SUCCESS.json``): the teacher's
        probabilities that soft labels learn, by content."""
        files = fs.read_json(join(self.layout.score_dir, SUCCESS))["files"]
        return fingerprint("score-files", sorted((k, v[1]) for k, v in files.items()))

    def execute(self) -> StageResult:
        """The stage contract, then the student's entry in the store's index (written when the student was trained
        here, or on the first skip of a train stage committed before the index existed: committed campaigns join
        it as they run again, with their fingerprints unchanged)."""
        result = super().execute()
        index = student_index(self.root, self.content_key)
        if result.extra.get("reused_from") is None and not fs.exists(index):
            fs.write_json(index, {"train_dir": stored_path(self.root, self.out_dir)})
        return result

    def _reuse(self, key: str) -> RunOutput | None:
        """The student of another committed train stage with content key ``key``, copied here; None when the index
        names none, or names a stage no longer committed or whose ``student.pt`` changed."""
        doc = fs.read_json_or_none(student_index(self.root, key))
        src = root_path(self.root, doc["train_dir"]) if doc else None
        marker = fs.read_json_or_none(join(src, SUCCESS)) if src and src != self.out_dir else None
        if src is None or marker is None:
            return None
        name = "student.pt"
        if name not in marker.get("files", {}) or check_dir(src, {name: marker["files"][name]}):
            return None
        fs.write_bytes(self.student_path, fs.read_bytes(join(src, name)))
        logger.info(
            "%s: the same inputs trained a student in %s (content key %s): copied, not trained again",
            self.label,
            doc["train_dir"],
            short(key),
        )
        return RunOutput(
            counts=dict(marker["counts"]),
            extra={"checkpoint": stored_path(self.root, self.student_path), "reused_from": doc["train_dir"]},
        )

    def _pool(self) -> tuple[Any, int]:
        """The online branch's unlabelled pool (image, idx) and its size; (None, 0) without an online policy."""
        if not self.train_cfg.online_policy:
            return None, 0
        from engine.samples import samples_dataset

        path = join(self.out_dir, "online_pool.parquet")  # the round's layout.online_pool for the round's student
        n = pool_table(self.root, self.ctx.rule, path)
        return samples_dataset(self.root, path).select_columns(["image", "idx"]), n

    def run(self) -> RunOutput:
        from engine.samples import samples_dataset
        from engine.train.trainer import train_student

        reused = self._reuse(self.content_key)
        if reused is not None:
            return reused

        labelled = samples_dataset(self.root, self.labelled_path)
        if self.model_cfg.va_head:
            labelled = with_va_labels(labelled, self.root, self.labelled_path)
        labelled = labelled.select_columns(
            ["image", "label", *(("valence", "arousal") if self.model_cfg.va_head else ())]
        )
        pseudo = None
        if self.selection_path:
            t = self.train_cfg
            score_dir = self.layout.score_dir if t.soft_labels else None  # soft labels: the teacher's probabilities
            pseudo = samples_dataset(
                self.root, self.selection_path, score_dir=score_dir, temperature=t.soft_temperature
            ).select_columns(["image", "label", "weight", *(["target"] if t.soft_labels else [])])
        pool_dataset, num_unlabelled = self._pool()
        online = pool_dataset is not None
        distill = self._distill_dataset() if self.distills else None
        val = self._val_dataset() if self.train_cfg.select_best else None
        params = asdict(self.threshold_cfg)  # the section as is: the worker builds the policy from it
        result = train_student(
            train_cfg=self.train_cfg,
            model_cfg=self.model_cfg,
            label_space=self.space,
            labelled=labelled,
            pseudo=pseudo,
            unlabelled=pool_dataset,
            num_unlabelled=num_unlabelled,
            distill=distill,
            val=val,
            storage_path=join(self.out_dir, "ray"),
            run_name=f"{self.campaign}-r{self.layout.index:03d}-{self.fingerprint()[:8]}",
            init_checkpoint=self.init_checkpoint,
            out_checkpoint=self.student_path,
            mlflow=self.mlflow,
            policy_params=params if online else None,
        )
        counts = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        counts["warm_started"] = int(self.init_checkpoint is not None)
        if self.pretrained:
            counts["pretrained"] = 1
        counts["labelled_rows"] = fs.read_parquet(self.labelled_path, columns=["key"]).num_rows
        if self.model_cfg.temporal:  # ABAW2021 sequence members, on the frozen CNN's features of the labelled rows
            from engine.train.temporal import fit_temporal

            counts.update(
                fit_temporal(self.student_path, root=self.root, labelled_path=self.labelled_path, cfg=self.train_cfg)
            )
        return RunOutput(counts=counts, extra={"checkpoint": stored_path(self.root, self.student_path)})

    def _distill_dataset(self) -> Any:
        """The pool rows the student distils (image, target: the teacher's probabilities at ``distill_temperature``):
        every row the round's score stage scored except those now in the labelled set (people's answers) or taken
        out of it (not a face), written once as ``distill_pool.parquet`` (key, shard, label = the teacher's argmax)."""
        from engine.review.answers import removed_keys
        from engine.samples import samples_dataset
        from engine.stages.score import list_shards

        path = join(self.out_dir, "distill_pool.parquet")
        if not fs.exists(path):
            out = set(fs.read_parquet(self.labelled_path, columns=["key"])["key"].to_pylist()) | removed_keys(
                self.layout
            )
            parts = [self.layout.score_part(s.name) for s in list_shards(self.root, self.ctx.rule.pool_sources)]
            scores = pa.concat_tables(
                [fs.read_parquet(p, columns=["key", "shard", "pred"]) for p in parts if fs.exists(p)]
            )
            keep = pa.array([k not in out for k in scores["key"].to_pylist()], pa.bool_())
            t = scores.filter(keep).sort_by("key")
            fs.write_parquet(
                path, pa.table({"key": t["key"], "shard": t["shard"], "label": t["pred"].cast(pa.int16())})
            )
        t = self.train_cfg
        ds = samples_dataset(self.root, path, score_dir=self.layout.score_dir, temperature=t.distill_temperature)
        return ds.select_columns(["image", "target"])

    def _val_dataset(self) -> Any:
        """The campaign's val split (image, label) as a Ray dataset, or None when it has no val row."""
        import ray

        from engine.stages.evaluate import split_samples

        table = split_samples(self.root, self.ctx.rule, "val")
        return ray.data.from_arrow(table.select(["image", "label"])) if table.num_rows else None


def with_va_labels(ds: Any, root: str, labelled_path: str) -> Any:
    """``ds`` (rows with ``key``) plus float32 ``valence`` / ``arousal`` columns from the sources' manifests (NaN where
    a row has none). The labelled set is small by premise, so its key -> (valence, arousal) map is built here on the
    driver from the manifest parts of the labelled shards and shipped to the map tasks."""
    import numpy as np

    from engine.io import fs
    from engine.layout import SourceLayout, parse_shard

    lab = fs.read_parquet(labelled_path, columns=["key", "shard"])
    keys = set(lab["key"].to_pylist())
    va: dict[str, tuple[float, float]] = {}
    for shard in sorted(set(lab["shard"].to_pylist())):
        source, idx = parse_shard(shard)
        m = fs.read_parquet(SourceLayout(root, source).manifest_part(idx), columns=["key", "valence", "arousal"])
        for k, v, a in zip(m["key"].to_pylist(), m["valence"].to_pylist(), m["arousal"].to_pylist(), strict=True):
            if k in keys:
                va[k] = (np.nan if v is None else v, np.nan if a is None else a)

    def add(batch: dict[str, Any]) -> dict[str, Any]:
        pairs = np.array([va.get(str(k), (np.nan, np.nan)) for k in batch["key"]], dtype=np.float32).reshape(-1, 2)
        return {**batch, "valence": pairs[:, 0], "arousal": pairs[:, 1]}

    return ds.map_batches(add, batch_format="numpy")


def pool_table(root: str, rule: PartitionRule, path: str) -> int:
    """Write the unlabelled pool as (key, shard, label=-1, idx) for the online branch (once); returns its size."""
    from engine.stages.score import list_shards, pool_keys

    labelled = frozenset(rule.labelled_keys())
    keys, shards = [], []
    for ref in list_shards(root, rule.pool_sources):
        k = pool_keys(rule, ref, labelled)
        keys += k
        shards += [ref.name] * len(k)
    t = pa.table(
        {
            "key": keys,
            "shard": shards,
            "label": pa.array(np.full(len(keys), -1), pa.int16()),
            "idx": pa.array(np.arange(len(keys)), pa.int64()),
        }
    )
    if not fs.exists(path):
        fs.write_parquet(path, t)
    return len(keys)
