"""Teachers: uint8 face images in, class probabilities out (one checkpoint, flip TTA, weighted ensembles)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError
from engine.fingerprint import fingerprint as _fingerprint

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig
    from engine.labels import LabelSpace

logger = logging.getLogger(__name__)

Images = Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8]
"""A batch of uint8 images: a list of (H, W) / (H, W, C) arrays or one (B, H, W[, C]) array."""


@dataclass(frozen=True)
class TeacherOutput:
    """What a teacher says about one batch."""

    probs: npt.NDArray[np.float32]
    """(B, C) class probabilities; rows sum to 1."""
    branch_probs: npt.NDArray[np.float32] | None = None
    """(B, M, C) probabilities of each of the M ensemble members (or ESR branches), or None for a single model."""
    va: npt.NDArray[np.float32] | None = None
    """(B, 2) predicted valence and arousal in [-1, 1] (models with a VA head), or None."""
    features: npt.NDArray[np.float32] | None = None
    """(B, D) backbone features (models with sequence members, ``model.temporal``), or None."""


@runtime_checkable
class Teacher(Protocol):
    """Anything that turns a batch of uint8 images into class probabilities in ``label_space``."""

    label_space: LabelSpace
    fingerprint: str
    """Identifies the predictions: weights, config, TTA and ensemble weights all enter it."""

    def predict(self, images: Images) -> TeacherOutput:
        """Probabilities for a batch of B images."""
        ...


def teacher_fingerprint(member_fingerprints: Sequence[str], weights: Sequence[float] | None, tta_flip: bool) -> str:
    """sha256 over the member fingerprints (in order), the normalised weights and the TTA flag."""
    return _fingerprint("teacher", list(member_fingerprints), None if weights is None else list(weights), tta_flip)


class CheckpointTeacher:
    """One checkpoint on one device, optionally with horizontal-flip TTA (mean of the two probability vectors; with
    ``flip_views``, the two views are also returned as the branches of a model that has none)."""

    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        tta_flip: bool = False,
        mixed_precision: bool = True,
        *,
        expect_label_space: LabelSpace | str | None = None,
        flip_views: bool = False,
    ) -> None:
        """Load ``path`` (see ``load_checkpoint``); ``mixed_precision`` autocasts on CUDA only (bf16 if supported)."""
        from engine.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, expect_label_space=expect_label_space, device=device)
        self.path = path
        self.model = loaded.model
        self.model_cfg = loaded.model_cfg
        self.label_space: LabelSpace = loaded.label_space
        self.checkpoint_fingerprint = loaded.fingerprint
        self.device = device
        self.tta_flip = tta_flip
        self.flip_views = flip_views and tta_flip
        self.mixed_precision = mixed_precision
        self.fingerprint: str = teacher_fingerprint([loaded.fingerprint], None, tta_flip)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        model_cfg: ModelConfig,
        label_space: LabelSpace,
        *,
        device: str | torch.device = "cpu",
        tta_flip: bool = False,
        mixed_precision: bool = True,
    ) -> CheckpointTeacher:
        """A teacher over a model already in memory (e.g. the student being validated during training): the same
        prediction path as a loaded checkpoint. The model is not copied and not switched to eval mode here."""
        self = cls.__new__(cls)
        self.path, self.model, self.model_cfg, self.label_space = "", model, model_cfg, label_space
        self.checkpoint_fingerprint, self.device, self.tta_flip = "", device, tta_flip
        self.flip_views = False
        self.mixed_precision = mixed_precision
        self.fingerprint = ""
        return self

    def predict(self, images: Images) -> TeacherOutput:
        """Probabilities (B, C) float32 for B uint8 images of any size (resized to the checkpoint's input size)."""
        import torch

        from engine.data.transforms import to_model_input

        # channels_last (as in training, engine.train.step): faster convolution kernels on CPU and GPU
        x = to_model_input(images, self.model_cfg, device=self.device).to(memory_format=torch.channels_last)
        b = x.shape[0]
        if b == 0:
            return TeacherOutput(np.zeros((0, len(self.label_space)), dtype=np.float32))
        if self.tta_flip:
            x = torch.cat([x, x.flip(-1)])
        from engine.models.heads import outputs_to_probs

        with torch.inference_mode(), self._autocast():
            raw = self.model(x)
            probs, branch, va = outputs_to_probs(raw)
            feats = raw["features"].float() if isinstance(raw, dict) and "features" in raw else None

        def out(t: torch.Tensor | None) -> npt.NDArray[np.float32] | None:
            if t is not None and self.tta_flip:  # mean of the image and its flip
                t = (t[:b] + t[b:]) / 2
            return None if t is None else t.cpu().numpy().astype(np.float32, copy=False)

        branches = out(branch)
        if self.flip_views and branches is None:  # (B, 2, C): the image's probabilities, then its mirror's
            branches = torch.stack([probs[:b], probs[b:]], dim=1).float().cpu().numpy()
        return TeacherOutput(out(probs), branches, out(va), out(feats))  # type: ignore[arg-type]

    @property
    def temporal(self) -> torch.nn.ModuleDict | None:
        """The checkpoint's sequence members (engine.models.sequence), or None for a per-frame model."""
        return getattr(self.model, "temporal", None)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        import torch

        dev = torch.device(self.device)
        if self.mixed_precision and dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield


class EnsembleTeacher:
    """Weighted mean of member probabilities; each member's probabilities are kept in ``branch_probs``."""

    def __init__(self, members: Sequence[Teacher], weights: Sequence[float] | None = None) -> None:
        """Combine ``members`` (all in one label space); ``weights`` are non-negative, normalised to sum 1.

        Raises:
            ConfigError: no members, label spaces differ, or weights have the wrong length / sign / zero sum.
        """
        if not members:
            raise ConfigError("an ensemble teacher needs at least one member checkpoint")
        first = members[0].label_space
        for m in members[1:]:
            if (m.label_space.name, tuple(m.label_space.classes)) != (first.name, tuple(first.classes)):
                raise ConfigError(
                    f"ensemble members disagree on the label space: {first.name} {list(first.classes)} vs "
                    f"{m.label_space.name} {list(m.label_space.classes)}; use members trained on one label space"
                )
        self.members = list(members)
        from engine.models.sequence import normalize_weights

        self.weights = normalize_weights(weights, len(members))
        self.label_space: LabelSpace = first
        self.fingerprint: str = teacher_fingerprint([m.fingerprint for m in members], self.weights, False)

    def predict(self, images: Images) -> TeacherOutput:
        """probs (B, C) = sum_m w_m * p_m; branch_probs (B, M, C) = the members' probs, in member order."""
        if not isinstance(images, np.ndarray):
            images = list(images)  # members each iterate over the batch
        outs = [m.predict(images) for m in self.members]
        branch = np.stack([o.probs for o in outs], axis=1).astype(np.float32)
        w = np.asarray(self.weights, dtype=np.float64)
        probs = np.einsum("bmc,m->bc", branch.astype(np.float64), w).astype(np.float32)
        va = None
        if all(o.va is not None for o in outs):  # members' VA heads: the same weighted mean
            members_va = np.stack([o.va for o in outs if o.va is not None], axis=1).astype(np.float64)
            va = np.einsum("bmk,m->bk", members_va, w).astype(np.float32)
        return TeacherOutput(probs=probs, branch_probs=branch, va=va)


def load_teacher(
    paths: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    tta_flip: bool = False,
    device: str | torch.device = "cpu",
    mixed_precision: bool = True,
    expect_label_space: LabelSpace | str | None = None,
    flip_views: bool = False,
) -> Teacher:
    """A CheckpointTeacher for one path (and no weights), else an EnsembleTeacher of one per path. ``flip_views``
    (with ``tta_flip``) gives a single checkpoint without branches its two views as branches; an ensemble's
    branches stay its members.

    The fingerprint is the sha256 of the member checkpoint fingerprints, the normalised weights and the TTA flag
    (for an ensemble, through each member's own teacher fingerprint).
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError("no teacher checkpoint given; set campaign.teacher_checkpoint or train round 0 first")
    members = [
        CheckpointTeacher(p, device, tta_flip, mixed_precision, expect_label_space=expect_label_space) for p in paths
    ]
    if len(members) == 1 and weights is None:
        members[0].flip_views = flip_views and tta_flip
        return members[0]
    if any(m.temporal is not None for m in members):
        raise ConfigError(
            f"{[p for p, m in zip(paths, members, strict=True) if m.temporal is not None]} carry sequence members "
            "(model.temporal), which are an ensemble of their own; use one such checkpoint as the teacher"
        )
    teacher = EnsembleTeacher(members, weights)
    logger.info(
        "ensemble teacher of %d checkpoints, weights %s, fingerprint %s",
        len(members),
        teacher.weights,
        teacher.fingerprint[:8],
    )
    return teacher


def worker_teacher(path: str, *, tta_flip: bool = False) -> Teacher:
    """The teacher of one checkpoint, loaded once per process and kept while the file is unchanged: Ray reuses
    its worker processes across tasks, so per-shard prediction tasks pay the load once per worker, not per shard."""
    import os

    st = os.stat(path) if "://" not in path else None
    return _cached_teacher(path, tta_flip, (st.st_mtime_ns, st.st_size) if st else None)


@functools.lru_cache(maxsize=8)  # an ensemble's members (campaign.teacher_members) stay loaded together
def _cached_teacher(path: str, tta_flip: bool, stamp: tuple[int, int] | None) -> Teacher:
    return load_teacher([path], tta_flip=tta_flip)
