"""Fit the sequence members (``model.temporal``: ABAW2021 CNN-RNN / CNN-Transformer) of a trained student.

The CNN is trained first (Ray Train, engine.train.trainer); this step then freezes it, computes its features for
every labelled row, orders the rows into videos (manifest ``group`` by ``frame``; a row without one is a one-frame
sequence), cuts each video into the same overlapping windows that scoring uses, and fits each member with per-frame
cross-entropy (label −1 frames ignored). The student checkpoint is rewritten with the fitted members (a new
fingerprint). The labelled set is small by premise, so this runs in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.config import TrainConfig
from engine.io import fs
from engine.layout import SourceLayout, parse_shard, video_id

logger = logging.getLogger(__name__)

BATCH_WINDOWS = 64
"""Windows per optimisation step."""


def labelled_sequences(root: str, labelled_path: str) -> dict[str, Any]:
    """The labelled rows with their pixels and video position: ``keys``, ``labels`` (N,), ``images`` (list of uint8
    arrays), ``videos`` (``<source>/<group>`` or None) and ``frames`` (int or None), in key order."""
    from engine.imaging import decode_pixels
    from engine.io.tars import read_images

    lab = fs.read_parquet(labelled_path, columns=["key", "shard", "label"]).to_pylist()
    by_shard: dict[str, dict[str, int]] = {}
    for r in lab:
        by_shard.setdefault(r["shard"], {})[r["key"]] = int(r["label"])
    rows: list[tuple[str, int, Any, str | None, int | None]] = []
    for shard, wanted in sorted(by_shard.items()):
        source, idx = parse_shard(shard)
        lay = SourceLayout(root, source)
        m = fs.read_parquet(lay.manifest_part(idx), columns=["key", "group", "frame"]).to_pylist()
        pos = {r["key"]: (r["group"], r["frame"]) for r in m if r["key"] in wanted}
        images = read_images(lay.shard(idx), set(wanted))
        for key, label in wanted.items():
            group, frame = pos.get(key, (None, None))
            video = video_id(source, group, frame)
            rows.append((key, label, decode_pixels(images[key]), video, None if video is None else int(frame)))
    rows.sort(key=lambda r: r[0])
    return {
        "keys": [r[0] for r in rows],
        "labels": np.asarray([r[1] for r in rows], np.int64),
        "images": [r[2] for r in rows],
        "videos": [r[3] for r in rows],
        "frames": [r[4] for r in rows],
    }


def training_windows(
    videos: Sequence[str | None], frames: Sequence[int | None], window: int
) -> list[npt.NDArray[np.int64]]:
    """Row-index arrays of the windows (engine.models.sequence.window_starts over each video in frame order; every
    row outside a video is a window of one)."""
    from engine.models.sequence import video_sequences, window_starts

    by_video, singles = video_sequences(videos, frames)
    out = [singles[i : i + 1] for i in range(len(singles))]
    for idx in by_video:
        w = min(window, len(idx))
        out += [idx[s : s + w] for s in window_starts(len(idx), window)]
    return out


def fit_member(
    head: Any,
    feats: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    windows: list[npt.NDArray[np.int64]],
    *,
    epochs: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Fit one member on the windows (batches of equal-length windows, shuffled each epoch, Adam).

    Returns:
        ``loss`` (mean of the last epoch) and ``accuracy`` (per-frame, over labelled frames, after the fit).
    """
    import torch
    import torch.nn.functional as F

    from engine.train.fit import Fit, fit_epoch
    from engine.train.step import StepStats

    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(feats)
    y = torch.from_numpy(labels)
    by_len: dict[int, list[npt.NDArray[np.int64]]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    head.requires_grad_(True)
    head.train()
    fit = Fit(head, torch.optim.Adam(head.parameters(), lr=lr))

    def step(rows: npt.NDArray[np.int64]) -> StepStats | None:
        """One Adam step on a (B, T) batch of windows' row indices; None when no frame of it is labelled."""
        idx = torch.from_numpy(rows)
        target = y[idx]
        if not (target >= 0).any():
            return None
        logits = head(x[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-1)
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        fit.optimizer.step()
        value = loss.item()
        return StepStats(loss=value, loss_s=value, loss_u=0.0, rows=len(rows), unlabelled_rows=0, weight_sum=0.0)

    last = float("nan")
    for _ in range(epochs):
        batches = [
            np.stack(ws[i : i + BATCH_WINDOWS]) for ws in by_len.values() for i in range(0, len(ws), BATCH_WINDOWS)
        ]
        last = fit_epoch(fit, (batches[j] for j in gen.permutation(len(batches))), step).mean_loss
    head.eval()
    from engine.models.sequence import member_probs

    pred = np.full(len(labels), -1, np.int64)
    for w in windows:  # per-window argmax of the last window holding each frame: a training-fit diagnostic only
        pred[w] = member_probs(head, feats[w], len(w)).argmax(1)
    known = labels >= 0
    acc = float((pred[known] == labels[known]).mean()) if known.any() else float("nan")
    return {"loss": last, "accuracy": acc}


def fit_temporal(checkpoint: str, *, root: str, labelled_path: str, cfg: TrainConfig) -> dict[str, float]:
    """Fit every sequence member of ``checkpoint`` on the labelled rows and rewrite the checkpoint in place.

    Returns:
        ``temporal_<member>_loss`` / ``temporal_<member>_train_acc`` per member, and ``temporal_cnn_train_acc`` (the
        frozen CNN's own per-frame training accuracy, for comparison).
    """
    from engine.models.checkpoint import read_checkpoint_meta, save_checkpoint
    from engine.models.teacher import CheckpointTeacher

    data = labelled_sequences(root, labelled_path)
    teacher = CheckpointTeacher(checkpoint)
    temporal = teacher.temporal
    if temporal is None:
        raise ValueError(f"{checkpoint} has no sequence members to fit (model.temporal is empty)")
    outs = [teacher.predict(data["images"][i : i + 256]) for i in range(0, len(data["images"]), 256)]
    feats = np.concatenate([o.features for o in outs if o.features is not None]).astype(np.float32)
    cnn_pred = np.concatenate([o.probs for o in outs]).argmax(1)
    labels = data["labels"]
    windows = training_windows(data["videos"], data["frames"], teacher.model_cfg.temporal_window)
    known = labels >= 0
    stats = {"temporal_cnn_train_acc": round(float((cnn_pred[known] == labels[known]).mean()), 4)}
    for k, (name, head) in enumerate(temporal.items()):
        fit = fit_member(
            head, feats, labels, windows, epochs=cfg.temporal_epochs, lr=cfg.temporal_lr, seed=cfg.seed + 101 * k
        )
        stats[f"temporal_{name}_loss"] = round(fit["loss"], 4)
        stats[f"temporal_{name}_train_acc"] = round(fit["accuracy"], 4)
    n_video = sum(v is not None for v in data["videos"])
    logger.info(
        "fitted sequence members %s on %d labelled rows (%d in videos, %d windows): %s",
        list(temporal),
        len(labels),
        n_video,
        len(windows),
        stats,
    )
    save_checkpoint(  # the members were fitted in place, inside the teacher's model
        checkpoint,
        teacher.model,
        model_cfg=teacher.model_cfg,
        label_space=teacher.label_space,
        extra={**read_checkpoint_meta(checkpoint).get("extra", {}), "temporal_fit": stats},
    )
    return stats
