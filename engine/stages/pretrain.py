"""Pretrain stage: the student's backbone learns from the campaign's faces before any label is used.

Runs once before round 0 (engine.campaign.prepare) when ``campaign.pretrain.method`` is set: SimSiam or BYOL on the
train and unlabelled splits of the campaign's labelled and unlabelled sources (images only; val and test faces are
never read), on Ray Train, resumable per epoch (engine.train.pretrain). It commits ``backbone.pt``, an engine
checkpoint of the round-0 net whose backbone holds the pretrained weights and whose classifier is freshly
initialised: round 0's student, and each of its members, starts from it (engine.stages.train).

Its output depends on the sources' images, the model and the pretraining settings, not on the campaign's labelled
fraction or seed, so it lives at the storage root, ``pretrain/<fingerprint>/``, and every campaign over the same
sources with the same settings shares one run. A linear probe on frozen features (a logistic regression on labelled
train faces, scored on val; the same probe on the untrained net beside it) says whether the features learnt
anything before any fine-tuning is spent.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import model_fingerprint_fields, to_dict
from engine.io import fs
from engine.layout import join, stored_path
from engine.partition_rule import POOL_SPLITS, keys_uniform
from engine.stages.base import RunOutput, Stage, StageContext

log = logging.getLogger(__name__)

CHECKPOINT = "backbone.pt"
NOT_FINGERPRINTED = ("in_process", "max_failures")
"""``campaign.pretrain`` keys that change where or how often the run is tried, not the weights it gives."""


def pretrain_sources(ctx: StageContext) -> tuple[str, ...]:
    """The sources whose faces are pretrained on: the campaign's labelled and unlabelled sources."""
    c = ctx.cfg.campaign
    return tuple(dict.fromkeys((*c.labelled, *c.unlabelled)))


class PretrainStage(Stage):
    """Pretrain round 0's backbone on the sources' faces and commit it as the round-0 net's initial weights."""

    name = "pretrain"
    VERSION = 1
    fault_after_epoch: ClassVar[int | None] = None
    """Test-only: the run raises after that epoch's checkpoint (a crash mid-run; the next execute resumes it)."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.cfg = ctx.cfg.campaign.pretrain
        self.model_cfg = ctx.cfg.model  # round 0's net (student.* keys apply from round 1)
        self.root = ctx.root

    @property
    def out_dir(self) -> str:
        return join(self.root, "pretrain", self.fingerprint()[:16])

    @property
    def label(self) -> str:
        return f"pretrain {self.cfg.method}"

    @property
    def checkpoint(self) -> str:
        """The committed round-0 initialisation (engine checkpoint format)."""
        return join(self.out_dir, CHECKPOINT)

    def inputs(self) -> tuple[str, ...]:
        return tuple(f"ingest:{s}" for s in pretrain_sources(self.ctx))

    def outputs(self) -> tuple[str, ...]:
        return (self.checkpoint, join(self.out_dir, "faces.parquet"), join(self.out_dir, "ray"))

    def resources(self) -> dict[str, float]:
        return {"CPU": float(self.cfg.num_workers)}

    def fingerprint_inputs(self) -> dict[str, Any]:
        pretrain = {k: v for k, v in to_dict(self.cfg).items() if k not in NOT_FINGERPRINTED}
        return {
            "pretrain": pretrain,
            "model": model_fingerprint_fields(self.model_cfg),
            "label_space": self.ctx.space.name,
            "probe_sources": list(self.ctx.cfg.campaign.labelled),
            "sources": {s: self.ctx.fingerprint_of(f"ingest:{s}") for s in pretrain_sources(self.ctx)},
        }

    def run(self) -> RunOutput:
        import torch

        from engine.models.checkpoint import save_checkpoint
        from engine.models.factory import create_model
        from engine.samples import samples_dataset
        from engine.train.loop import derive_seed
        from engine.train.pretrain import load_backbone, pretrain_backbone

        faces = join(self.out_dir, "faces.parquet")
        if not fs.exists(faces):
            fs.write_parquet(faces, self._faces())
        result = pretrain_backbone(
            samples_dataset(self.root, faces).select_columns(["image"]),
            cfg=self.cfg,
            model_cfg=self.model_cfg,
            storage_path=join(self.out_dir, "ray"),
            run_name=f"pretrain-{self.fingerprint()[:8]}",
            fault_after_epoch=self.fault_after_epoch,
        )
        space = self.ctx.space
        torch.manual_seed(derive_seed(self.cfg.seed, 0, 0, 0))
        model = create_model(self.model_cfg, len(space), label_space=space)
        fresh = load_backbone(model, result.backbone)
        last = result.history[-1]
        info = {
            "method": self.cfg.method,
            "epochs": len(result.history),
            "ssl_loss": float(last["ssl_loss"]),
            "spread": float(last["spread"]),
            "fresh": fresh,
        }
        save_checkpoint(self.checkpoint, model, model_cfg=self.model_cfg, label_space=space, extra={"pretrain": info})
        seconds = sum(float(r["seconds"]) for r in result.history)
        counts: dict[str, Any] = {
            "faces": result.images,
            "epochs": len(result.history),
            "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from_epoch,
            "ssl_loss": round(float(last["ssl_loss"]), 6),
            "spread": round(float(last["spread"]), 6),
            "images_per_s": round(sum(int(r["images"]) for r in result.history) / seconds, 2) if seconds else 0.0,
        }
        if self.cfg.probe_rows:
            counts.update(self._probe(result.backbone))
        return RunOutput(
            counts=counts,
            extra={
                "checkpoint": stored_path(self.root, self.checkpoint),
                "history": [
                    {k: r[k] for k in ("epoch", "ssl_loss", "spread", "lr", "images_per_s")} for r in result.history
                ],
            },
        )

    def _faces(self) -> pa.Table:
        """(key, shard, label = -1) of every train / unlabelled face of the pretraining sources, at most
        ``max_images`` of them (the lowest key hashes of the seed)."""
        from engine.stages.partition import _manifest_parts

        parts = []
        for s in pretrain_sources(self.ctx):
            for m in _manifest_parts(self.root, s, ["key", "shard", "split", "leak_with"]):
                keep = pc.and_(pc.is_in(m["split"], pa.array(POOL_SPLITS)), pc.is_null(m["leak_with"]))
                parts.append(m.filter(keep).select(["key", "shard"]))
        t = pa.concat_tables(parts) if parts else pa.table({"key": pa.array([], pa.string()), "shard": []})
        t = _lowest_hashes(t, self.cfg.max_images, self.cfg.seed)
        return t.append_column("label", pa.array(np.full(t.num_rows, -1, np.int16))).sort_by("key")

    def _probe(self, pretrained: dict[str, Any]) -> dict[str, float]:
        """Val macro-F1 and accuracy of the linear probe on the pretrained backbone (its state dict) and on the same
        backbone untrained."""
        import torch

        from engine.models.factory import create_backbone
        from engine.samples import samples_dataset
        from engine.train.loop import derive_seed
        from engine.train.memory import decode_rows
        from engine.train.pretrain import backbone_features, linear_probe

        space = self.ctx.space
        sets = {}
        for split in ("train", "val"):
            path = join(self.out_dir, f"probe_{split}.parquet")
            if not fs.exists(path):
                fs.write_parquet(path, self._probe_rows(split))
            ds = samples_dataset(self.root, path).select_columns(["image", "label"])
            ds.context.execution_options.preserve_order = True
            sets[split] = decode_rows(ds.iter_batches(batch_size=1024, batch_format="numpy"), self.model_cfg)
        torch.manual_seed(derive_seed(self.cfg.seed, 0, 0, 0))
        untrained, _ = create_backbone(self.model_cfg)
        trained, _ = create_backbone(self.model_cfg)
        trained.load_state_dict(pretrained)
        out: dict[str, float] = {"probe_train_faces": sets["train"].rows, "probe_val_faces": sets["val"].rows}
        if not (sets["train"].rows and sets["val"].rows):
            log.warning("%s: no labelled train or val faces in %s: no linear probe", self.label, self.inputs())
            return out
        for name, net in (("probe", trained), ("probe_untrained", untrained)):
            x = {s: backbone_features(net, sets[s].pixels, self.model_cfg) for s in sets}
            y = {s: np.asarray(sets[s].columns["label"], np.int64) for s in sets}
            m = linear_probe(x["train"], y["train"], x["val"], y["val"], list(space.classes))
            out[f"{name}_val_macro_f1"], out[f"{name}_val_accuracy"] = m["macro_f1"], m["accuracy"]
        log.info(
            "%s: linear probe val macro-F1 %.4f (untrained net %.4f)",
            self.label,
            out["probe_val_macro_f1"],
            out["probe_untrained_val_macro_f1"],
        )
        return out

    def _probe_rows(self, split: str) -> pa.Table:
        """Up to ``probe_rows`` labelled faces of the labelled sources' ``split`` (no leakage flag), by key hash."""
        from engine.stages.partition import _manifest_parts

        parts = []
        for s in self.ctx.cfg.campaign.labelled:
            for m in _manifest_parts(self.root, s, ["key", "shard", "label", "split", "leak_with"]):
                keep = pc.and_(pc.equal(m["split"], split), pc.greater_equal(m["label"], 0))
                parts.append(m.filter(pc.and_(keep, pc.is_null(m["leak_with"]))).select(["key", "shard", "label"]))
        t = pa.concat_tables(parts)
        return _lowest_hashes(t, self.cfg.probe_rows, self.cfg.seed).sort_by("key")


def _lowest_hashes(t: pa.Table, n: int | None, seed: int) -> pa.Table:
    """The ``n`` rows of ``t`` with the lowest seeded key hashes (all of them when ``n`` is None or larger)."""
    if n is None or t.num_rows <= n:
        return t
    u = keys_uniform(seed, t["key"].to_pylist())
    return t.take(pa.array(np.sort(np.argsort(u, kind="stable")[:n])))
