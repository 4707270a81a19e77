"""Train stage: the round's student on labelled ∪ selected samples (Ray Train underneath, resumable)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engine.config import ModelConfig, ThresholdConfig, TrainConfig
from engine.labels import LabelSpace
from engine.layout import RoundLayout, join
from engine.stages.base import RunOutput, Stage
from engine.stages.partition import PartitionRule


class TrainStage(Stage):
    """Train a student and write ``train/student.pt`` (engine checkpoint format)."""

    name = "train"
    VERSION = 1

    def __init__(
        self,
        root: str,
        round_layout: RoundLayout,
        train_cfg: TrainConfig,
        model_cfg: ModelConfig,
        space: LabelSpace,
        *,
        labelled_path: str,
        selection_path: str | None,
        pool_dataset: Any | None,
        num_unlabelled: int,
        threshold_cfg: ThresholdConfig,
        init_checkpoint: str | None,
        campaign: str,
        upstream: dict[str, str],
        mlflow: dict[str, str] | None = None,
        on_existing: str = "error",
        rule: PartitionRule | None = None,
    ) -> None:
        super().__init__(round_layout.train_dir, on_existing=on_existing, label=f"train r{round_layout.index:03d}")
        self.root, self.layout, self.train_cfg, self.model_cfg, self.space = (
            root,
            round_layout,
            train_cfg,
            model_cfg,
            space,
        )
        self.labelled_path, self.selection_path, self.pool_dataset = labelled_path, selection_path, pool_dataset
        self.num_unlabelled, self.threshold_cfg, self.init_checkpoint = num_unlabelled, threshold_cfg, init_checkpoint
        self.campaign, self.upstream, self.mlflow = campaign, upstream, mlflow
        self.rule = rule
        """The campaign's partition rule: the val split for ``train.select_best``."""

    def fingerprint_inputs(self) -> dict[str, Any]:
        fp: dict[str, Any] = {
            "train": asdict(self.train_cfg),
            "model": asdict(self.model_cfg),
            "label_space": self.space.name,
            "upstream": self.upstream,
        }
        if self.train_cfg.online_policy:
            fp["online_threshold"] = asdict(self.threshold_cfg)
        return fp

    def run(self) -> RunOutput:
        from engine.samples import samples_dataset
        from engine.train.trainer import train_student

        labelled = samples_dataset(self.root, self.labelled_path)
        if self.model_cfg.va_head:
            labelled = with_va_labels(labelled, self.root, self.labelled_path)
        labelled = labelled.select_columns(
            ["image", "label", *(("valence", "arousal") if self.model_cfg.va_head else ())]
        )
        pseudo = samples_dataset(self.root, self.selection_path) if self.selection_path else None
        if pseudo is not None:
            pseudo = pseudo.select_columns(["image", "label", "weight"])
        online = self.train_cfg.online_policy is not None and self.pool_dataset is not None
        val = self._val_dataset() if self.train_cfg.select_best else None
        params = {k: v for k, v in asdict(self.threshold_cfg).items() if k not in ("policy", "never_label")}
        params["never_label"] = [self.space.index(n) for n in self.threshold_cfg.never_label]
        result = train_student(
            train_cfg=self.train_cfg,
            model_cfg=self.model_cfg,
            label_space=self.space,
            labelled=labelled,
            pseudo=pseudo,
            unlabelled=self.pool_dataset if online else None,
            num_unlabelled=self.num_unlabelled if online else 0,
            val=val,
            storage_path=join(self.out_dir, "ray"),
            run_name=f"{self.campaign}-r{self.layout.index:03d}-{self.fingerprint()[:8]}",
            init_checkpoint=self.init_checkpoint if self.train_cfg.warm_start else None,
            out_checkpoint=self.layout.student,
            mlflow=self.mlflow,
            policy_params=params if online else None,
        )
        counts = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.model_cfg.temporal:  # ABAW2021 sequence members, on the frozen CNN's features of the labelled rows
            from engine.train.temporal import fit_temporal

            counts.update(
                fit_temporal(self.layout.student, root=self.root, labelled_path=self.labelled_path, cfg=self.train_cfg)
            )
        return RunOutput(counts=counts, extra={"checkpoint": self.layout.student})

    def _val_dataset(self) -> Any:
        """The campaign's val split (image, label) as a Ray dataset, or None when it has no val row."""
        import ray

        from engine.stages.evaluate import split_samples

        if self.rule is None:
            return None
        table = split_samples(self.root, self.rule, "val")
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
