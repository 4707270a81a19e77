"""Typed, frozen configuration: dataclass sections, strict YAML loading and ``--set`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from engine.errors import ConfigError

T = TypeVar("T")

SPLITS = ("train", "val", "test", "unlabelled")

MAX_SOURCE_NAME_CHARS = 48
"""Longest source name: it prefixes every row key of the source (engine.sources.base.make_key)."""


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where every stage writes."""

    root: str = "runs"
    """Storage root: a local path or any pyarrow filesystem URI (``s3://bucket/prefix``)."""
    on_existing: str = "error"
    """What to do when a committed stage has another fingerprint, or files that differ from their recorded sha256:
    ``error`` or ``overwrite`` (rebuild the stage)."""
    verify: bool = True
    """Check a committed stage's files against the sha256 its ``_SUCCESS.json`` records before they are used again
    (a skipped stage, once per file per process); off saves the re-read (``bench/verify_cost.py`` measures it)."""

    def __post_init__(self) -> None:
        _check_choice("storage.on_existing", self.on_existing, ("error", "overwrite"))


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """One input dataset in one of the supported on-disk formats."""

    format: str
    """Adapter name: fer2013, kaggle_fer2013, ferplus, rafdb, image_folder, flat_folder, csv_list, expw, affectnet,
    diffusionfer, affwild2, mindface."""
    path: str
    """Root folder (or file) of the dataset in its original layout."""
    name: str = ""
    """Source name used in keys and paths; filled from the mapping key in ``sources``."""
    label_space: str = "basic7"
    """Label space the adapter maps native labels into."""
    label_source: str = "fer2013"
    """Format fer2013 only: ``fer2013`` (original 7-class label) or ``ferplus`` (FER+ vote majority). Format
    kaggle_fer2013 accepts only ``fer2013`` (its CSV has no votes); format ferplus always uses the vote majority."""
    follow_outside: bool = False
    """Read files whose path resolves outside ``path`` (a symlink out of the folder, a CSV-list path climbing out of
    its folder with ``../``); off: such files are quarantined as ``outside_root``. Absolute paths written in a CSV
    list are always read."""
    split: str = "train"
    """Split given to rows of formats that carry none (image folders, flat folders, CSV lists without a split)."""
    limit: int | None = None
    """Keep at most this many rows per split, in listing order (tests and demos); None keeps all."""

    def __post_init__(self) -> None:
        if len(self.name) > MAX_SOURCE_NAME_CHARS:  # the name starts every row key, which is at most 95 characters
            raise ConfigError(
                f"source name {self.name!r} has {len(self.name)} characters; give it at most {MAX_SOURCE_NAME_CHARS}"
            )
        _check_choice("sources.*.split", self.split, SPLITS)
        _check_choice("sources.*.label_source", self.label_source, ("fer2013", "ferplus"))
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"sources.{self.name}.limit must be positive or null, got {self.limit}")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Decode, validate, hash, deduplicate and shard a source."""

    samples_per_shard: int = 1000
    """Samples per WebDataset tar. Never change it for an existing storage root."""
    list_chunk_rows: int = 2000
    """Rows per listing part: the unit of decode work and of crash recovery."""
    image_format: str = "png"
    """Encoding of the stored images: png (lossless) or jpg."""
    resize: int | None = None
    """Resize every image to this square side in pixels; None keeps the original size."""
    grayscale: bool = False
    """Convert every image to a single grey channel."""
    min_side_px: int = 16
    """Images with a side shorter than this are quarantined as ``too_small``."""
    max_pixels: int = 50_000_000
    """Images claiming more pixels than this are quarantined as ``too_large`` (decompression bombs)."""
    max_bytes: int = 50_000_000
    """Files larger than this are quarantined as ``too_large`` without being read."""
    phash_leakage: bool = True
    """Flag train/unlabelled samples whose perceptual hash equals a val/test sample (not only exact sha256 twins)."""
    detect_faces: bool = False
    """Crop each image to its most confident MTCNN face (needs ``pip install --no-deps facenet-pytorch``); images with
    no face are quarantined as ``no_face``. Off: the face_* keys below are ignored and not fingerprinted."""
    face_margin: float = 0.2
    """Face crop: a square of side max(face w, h) * (1 + 2 * face_margin) around the face, clipped to the image."""
    face_size: int = 112
    """Face crops are resized to this square side in pixels (then ``resize``, if set, still applies)."""
    face_min_prob: float = 0.9
    """Faces MTCNN scores below this probability do not count (the image becomes ``no_face``)."""
    face_align: bool = False
    """Before cropping, rotate the image about the face box centre so that MTCNN's two eye landmarks lie level."""
    in_process_rows: int = 5000
    """A source of at most this many listed rows is decoded, deduplicated and sharded in the job's own process
    instead of by Ray tasks: the same functions, so the same files, without starting Ray (its start-up costs more
    than the work of a small source). 0 = always Ray; on a cluster (``RAY_ADDRESS`` set) Ray is always used. Not
    part of the fingerprint: it changes where the work runs, not what it writes."""

    def __post_init__(self) -> None:
        _check_choice("ingest.image_format", self.image_format, ("png", "jpg"))
        _check_positive("ingest.face_size", self.face_size)
        if not 0 <= self.face_min_prob <= 1:
            raise ConfigError(f"ingest.face_min_prob must be in [0, 1], got {self.face_min_prob}")
        if self.face_margin < 0:
            raise ConfigError(f"ingest.face_margin must be >= 0, got {self.face_margin}")
        _check_positive("ingest.samples_per_shard", self.samples_per_shard)
        _check_positive("ingest.list_chunk_rows", self.list_chunk_rows)
        _check_positive("ingest.min_side_px", self.min_side_px)
        _check_positive("ingest.max_pixels", self.max_pixels)
        _check_positive("ingest.max_bytes", self.max_bytes)
        _check_range("ingest.in_process_rows", self.in_process_rows, 0, 1 << 40)
        if self.resize is not None:
            _check_positive("ingest.resize", self.resize)


TEMPORAL_MEMBERS = ("gru", "transformer")
"""Sequence members of ``model.temporal`` (ABAW2021 CNN-RNN and CNN-Transformer)."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network the student is built from (and the teacher of round 0)."""

    name: str = "tiny_cnn"
    """Engine net (tiny_cnn, resnet_fer, mini_xception) or any timm model name."""
    pretrained: bool = False
    """Load timm's pretrained weights (needs network access to the model hub, unless ``weights`` is given)."""
    weights: str | None = None
    """A local file of timm weights (.safetensors / .pth / .bin, e.g. ImageNet- or face-pretrained) loaded as the
    pretrained weights, with no hub: timm re-initialises the classifier for this label space and adapts the stem to
    ``in_chans``. timm models only; relative paths are taken from the working directory at load."""
    in_chans: int = 1
    """Input channels: 1 for grey faces, 3 for colour."""
    input_size: int = 48
    """Square input side in pixels."""
    mean: tuple[float, ...] = (0.5,)
    """Per-channel normalisation mean, on pixels scaled to [0, 1]."""
    std: tuple[float, ...] = (0.5,)
    """Per-channel normalisation std, on pixels scaled to [0, 1]."""
    drop_rate: float = 0.0
    """Dropout before the classifier."""
    width: int = 16
    """Base width (channels of the first block) of ``vgg_fer``; the blocks have width × (1, 2, 4, 8) channels."""
    head: str = "linear"
    """Classifier on the backbone features: ``linear`` (one head), ``cascade`` (CFC-SP coarse head over the coarse5
    classes present plus a fine head over the Negative classes), or ``esr`` (``esr_branches`` branches whose
    probabilities are averaged)."""
    esr_branches: int = 4
    """ESR only: number of branches on the shared backbone."""
    esr_hidden: int = 128
    """ESR only: width of each branch's hidden layer (its features enter the diversity loss)."""
    va_head: bool = False
    """Add a valence-arousal regression head (2 tanh outputs in [-1, 1])."""
    temporal: tuple[str, ...] = ()
    """ABAW2021 sequence teachers on top of the per-frame CNN: ``gru`` (CNN-RNN, a bidirectional GRU over per-frame
    features) and / or ``transformer`` (CNN-Transformer, a small transformer encoder over per-frame features). Each
    runs over windows of ``temporal_window`` frames of a video (manifest ``group`` / ``frame``; an image without a
    video is a one-frame sequence) and the teacher is the weighted mean of the CNN and these members. The heads are
    fitted on frozen CNN features of the labelled rows after each student is trained. Empty = a per-frame model."""
    temporal_window: int = 8
    """Frames per window of the sequence members (windows overlap by half; a frame's probability is the mean over the
    windows that hold it)."""
    temporal_hidden: int = 64
    """Width of the sequence members (GRU hidden size per direction, transformer model dimension)."""
    temporal_weights: tuple[float, ...] | None = None
    """Ensemble weights of ``[cnn, *temporal]`` (normalised to sum 1); None = equal weights."""

    def __post_init__(self) -> None:
        _check_choice("model.head", self.head, ("linear", "cascade", "esr"))
        _check_positive("model.width", self.width)
        _check_positive("model.in_chans", self.in_chans)
        _check_positive("model.input_size", self.input_size)
        if len(self.mean) not in (1, self.in_chans) or len(self.std) not in (1, self.in_chans):
            raise ConfigError(
                f"model.mean and model.std need 1 or model.in_chans={self.in_chans} values, got {list(self.mean)} "
                f"and {list(self.std)}"
            )
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"model.std must be positive, got {list(self.std)}")
        _check_range("model.drop_rate", self.drop_rate, 0.0, 1.0, hi_open=True)
        if self.head == "esr" and self.esr_branches < 2:
            raise ConfigError(f"model.esr_branches must be >= 2 for head=esr, got {self.esr_branches}")
        for member in self.temporal:
            _check_choice("model.temporal", member, TEMPORAL_MEMBERS)
        if len(set(self.temporal)) != len(self.temporal):
            raise ConfigError(f"model.temporal lists a member twice: {list(self.temporal)}")
        if self.temporal_window < 1 or self.temporal_hidden < 1:
            raise ConfigError(
                f"model.temporal_window and model.temporal_hidden must be >= 1, got {self.temporal_window} and "
                f"{self.temporal_hidden}"
            )
        if self.temporal_weights is not None and len(self.temporal_weights) != 1 + len(self.temporal):
            raise ConfigError(
                f"model.temporal_weights needs one weight for cnn and one per model.temporal member "
                f"({1 + len(self.temporal)}: {['cnn', *self.temporal]}), got {list(self.temporal_weights)}"
            )


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Teacher scoring of every kept sample on a Ray Data actor pool."""

    batch_size: int = 256
    """Images per model call."""
    num_actors: int = 0
    """Size of the scoring actor pool; 0 = as many as the cluster holds: one per ``gpus_per_actor`` GPUs on a GPU
    cluster, else one per ``cpus_per_actor`` CPUs (each actor then reserves a little less, so reads keep a CPU)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved by each actor (also its torch thread count, rounded up)."""
    gpus_per_actor: float = 0.0
    """GPUs per actor; 0 scores on CPU. Set to 1 on GPU clusters."""
    tta_flip: bool = False
    """Average the probabilities of the image and its horizontal flip."""
    flip_views: bool = False
    """With ``tta_flip``, also keep the image's and its mirror's probabilities as the two branches of a
    single-checkpoint teacher (score parts' ``branch_probs``), so that ``disagreement`` (and the review rule
    ``disagreement``) measures how much the mirror changes the teacher's mind; the probabilities stay their mean.
    Ignored where the teacher has members or branches of its own (an ensemble, ESR)."""
    hist_bins: int = 1000
    """Bins of the per-class confidence histograms in ``score/stats.json``."""
    in_process_rows: int = 5000
    """A pool of at most this many rows (summed over its pending shards) is scored in the job's own process, shard
    by shard, by the actors' scorer with a torch thread per core, instead of on a Ray actor pool: each actor costs
    seconds of start-up (a process, torch's import, the teacher's load), more than a small pool's work. CPU scoring
    only (``gpus_per_actor: 0``); 0 = always Ray; on a cluster (``RAY_ADDRESS`` set) Ray is always used. Not part of
    the fingerprint: it changes where the work runs, not what it writes (the same bytes, tested)."""
    store_mib_per_actor: int = 256
    """Object store memory the scoring dataset may hold, per actor (MiB): how far the shard reads run ahead of the
    actors. The bound keeps the store and the actors' memory flat as the pool grows (without it, over 1M faces the
    store held 800 MiB and an actor grew from 1.1 to 1.6 GB; at 256 an actor stays at 1.1 GB at full rate, while 64
    cost 9-22 % of the rate on a 2-core machine: docs/scaling.md). 0 = Ray Data's default (half the store, filled
    when reads outpace scoring)."""
    disagreement: str = "vote_entropy"
    """Column ``disagreement`` of teachers with branches (ESR, ensembles): ``vote_entropy`` (entropy of the members'
    argmax votes, nats), ``variance`` (per-class variance across members, mean over classes) or ``js`` (Jensen-Shannon:
    entropy of the mean minus the mean entropy)."""
    smooth: str | None = None
    """Per-video smoothing of the probabilities of rows with a manifest ``group`` and ``frame`` (CFC-SP smooth
    predicting), after scoring and before thresholds: ``mean`` (centred moving average over frames within
    ``smooth_window``) or ``ema`` (causal exponential moving average, alpha = 2 / (smooth_window + 1)); None = off."""
    smooth_window: int = 5
    """Smoothing window in frames (odd for ``mean``: frame f averages frames f - w//2 .. f + w//2 that exist)."""

    def __post_init__(self) -> None:
        _check_choice("score.disagreement", self.disagreement, ("vote_entropy", "variance", "js"))
        if self.flip_views and not self.tta_flip:
            raise ConfigError("score.flip_views keeps the two views of score.tta_flip: set score.tta_flip=true too")
        if self.smooth is not None:
            _check_choice("score.smooth", self.smooth, ("mean", "ema"))
        _check_positive("score.smooth_window", self.smooth_window)
        _check_positive("score.batch_size", self.batch_size)
        _check_range("score.num_actors", self.num_actors, 0, 100_000)
        _check_positive("score.hist_bins", self.hist_bins)
        _check_range("score.in_process_rows", self.in_process_rows, 0, 1 << 40)
        _check_range("score.store_mib_per_actor", self.store_mib_per_actor, 0, 1 << 20)
        _check_range("score.cpus_per_actor", self.cpus_per_actor, 0.0, 1024.0)
        _check_range("score.gpus_per_actor", self.gpus_per_actor, 0.0, 64.0)


@dataclass(frozen=True, kw_only=True)
class ThresholdConfig:
    """Per-class confidence thresholds for one round (offline policies; see engine/thresholds)."""

    policy: str = "dtm_r"
    """fixed, dtm_r, flexmatch, freematch, softmatch, quantile, topk, precision (offline, from the teacher's val)."""
    tau: float = 0.95
    """Base threshold: the fixed threshold, and tau_max of DTM-R / FlexMatch."""
    tau_min: float = 0.5
    """Floor of DTM-R thresholds (also the floor of the quantile and top-K policies)."""
    mapping: str = "convex"
    """DTM-R / FlexMatch mapping M: convex x/(2-x), linear x, concave, linear_offset or low_limit."""
    warmup: bool | None = None
    """DTM-R / FlexMatch warm-up normalisation by the unused count: None (default) = on for the online form (as
    FlexMatch), off for offline rounds (the unconfident pool would put every class at tau_min); true / false = both
    forms (true is the offline rule before this default)."""
    momentum: float = 0.999
    """FreeMatch / SoftMatch EMA momentum of the online form (USB ema_p); offline fits use the round's exact means."""
    fairness_weight: float = 0.0
    """FreeMatch self-adaptive fairness (SAF) loss weight w_f for the online branch; 0 = off (USB configs: 0.001)."""
    n_sigma: float = 2.0
    """SoftMatch: the truncated Gaussian's std is sigma_t / n_sigma (USB default 2)."""
    uniform_align: bool = True
    """SoftMatch uniform alignment of the weak-view probabilities (online form)."""
    quantile: float = 0.8
    """Quantile policy: per-class confidence quantile used as threshold."""
    top_k: int = 1000
    """Top-K policy: samples kept per class."""
    never_label: tuple[str, ...] = ()
    """Classes never pseudo-labelled (e.g. ``Other`` for corpora that lack it)."""
    target_precision: float = 0.8
    """Precision policy: per class, the lowest confidence at which the teacher's val predictions of that class
    reach this precision is the class's threshold (floored at tau_min; tau where val never reaches it)."""
    min_support: int = 20
    """Precision policy: the fewest val rows a class's threshold may be estimated from."""

    def __post_init__(self) -> None:
        _check_range("threshold.tau", self.tau, 0.0, 1.0)
        _check_range("threshold.target_precision", self.target_precision, 0.0, 1.0)
        _check_positive("threshold.min_support", self.min_support)
        _check_range("threshold.tau_min", self.tau_min, 0.0, 1.0)
        _check_range("threshold.momentum", self.momentum, 0.0, 1.0)
        _check_range("threshold.quantile", self.quantile, 0.0, 1.0)
        _check_range("threshold.fairness_weight", self.fairness_weight, 0.0, float("inf"))
        if self.n_sigma <= 0:
            raise ConfigError(f"threshold.n_sigma must be positive, got {self.n_sigma}")
        _check_positive("threshold.top_k", self.top_k)


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Turn thresholds into the round's pseudo-labelled set."""

    cap_per_class: int | None = None
    """At most this many pseudo-labels per class (highest confidence first)."""
    cap_multiple_of_labelled: float | None = None
    """At most this multiple of the class's labelled count per class."""
    floor_per_class: int = 0
    """Duplicate selected samples of sparse classes up to this many rows (Noisy Student)."""
    max_unlabelled_ratio: float | None = None
    """At most this many pseudo-labels per labelled sample, overall."""
    weight: float = 1.0
    """Loss weight of each selected sample (times the policy's row weight with ``weighting: policy``)."""
    weighting: str = "constant"
    """``constant``: every selected row weighs ``weight``. ``policy``: ``weight`` times the fitted threshold
    policy's per-row weight of its confidence (SoftMatch's truncated Gaussian below its mean; 1 for hard policies),
    and a row enters when that weight is at least ``min_weight`` (SoftMatch admits rows below its mean)."""
    min_weight: float = 0.0
    """With ``weighting: policy``: the lowest policy weight a row may have to enter (0 = every row, as SoftMatch)."""
    max_disagreement: float | None = None
    """Reject rows whose score ``disagreement`` (branch / ensemble teachers) is above this; None = off. With
    ``threshold.policy: fixed`` and ``tau: 0`` the disagreement alone selects."""
    min_valence: dict[str, float] = field(default_factory=dict)
    """VA gating: class name -> lowest predicted valence a pseudo-label of that class may have (e.g. Happiness: 0)."""
    max_valence: dict[str, float] = field(default_factory=dict)
    """VA gating: class name -> highest predicted valence a pseudo-label of that class may have (e.g. Sadness: 0)."""

    def __post_init__(self) -> None:
        if self.cap_per_class is not None:
            _check_range("select.cap_per_class", self.cap_per_class, 0, 1 << 62)
        for key in ("cap_multiple_of_labelled", "max_unlabelled_ratio"):
            value = getattr(self, key)
            if value is not None:
                _check_range(f"select.{key}", value, 0.0, float("inf"))
        _check_range("select.floor_per_class", self.floor_per_class, 0, 1 << 62)
        _check_range("select.weight", self.weight, 0.0, float("inf"))
        if self.weighting not in ("constant", "policy"):
            raise ConfigError(f"select.weighting must be 'constant' or 'policy', got {self.weighting!r}")
        _check_range("select.min_weight", self.min_weight, 0.0, 1.0)
        if self.max_disagreement is not None:
            _check_range("select.max_disagreement", self.max_disagreement, 0.0, float("inf"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Student training on Ray Train."""

    epochs: int = 10
    """Passes over the training set (labelled + the round's pseudo-labelled rows)."""
    batch_size: int = 128
    """Labelled (and pseudo-labelled) samples per step."""
    lr: float = 0.03
    """Base learning rate (the peak of ``onecycle``)."""
    optimizer: str = "sgd"
    """sgd (Nesterov, momentum 0.9) or adamw."""
    weight_decay: float = 5e-4
    """L2 weight decay of the optimiser."""
    lambda_u: float = 1.0
    """Weight of the pseudo-labelled (and online unlabelled) loss."""
    balanced_sampling: bool = False
    """Sample the labelled set class-balanced."""
    online_policy: str | None = None
    """Online threshold policy for a FixMatch-style unlabelled branch each step (dtm_r, fixed, ...); None = off."""
    mu: int = 1
    """Unlabelled:labelled batch ratio of the online branch."""
    num_workers: int = 1
    """Ray Train workers (data-parallel, DDP); each reserves one CPU (and one GPU with ``use_gpu``)."""
    in_process: bool = False
    """Train in the driver process (Ray Train's local mode, ``ScalingConfig(num_workers=0)``): no controller and
    worker actors, so none of their start-up (about 15 s per training on a 2-core machine, more than a small
    student's epochs); one worker only (``num_workers`` = 1); the engine keeps the last epoch's checkpoint in the
    run directory and a re-run resumes from it; no retry within a call (``max_failures`` unused)."""
    use_gpu: bool = False
    """Give each Ray Train worker a GPU."""
    mixed_precision: bool = True
    """bf16/fp16 autocast when training on GPU (ignored on CPU)."""
    max_failures: int = 1
    """Ray Train restarts of a failed run (a lost worker or node) from its last epoch checkpoint."""
    seed: int = 0
    """Seed of the initial weights, sampling order and augmentation draws (per epoch and worker)."""
    warm_start: bool = False
    """Initialise the student from the teacher's weights."""
    fine_weight: float = 1.0
    """Cascade models: weight of the fine-head CE (mean over the Negative-class rows) added to the coarse CE."""
    diversity_weight: float = 0.0
    """ESR models: weight of the branch diversity loss (mean RBF similarity of the branch features)."""
    diversity_gamma: float = 1.0
    """ESR models: RBF width gamma of the diversity loss, on L2-normalised branch features."""
    va_weight: float = 1.0
    """Models with a VA head: weight of the CCC loss ``1 - (CCC_valence + CCC_arousal) / 2`` on rows with VA labels."""
    temporal_epochs: int = 30
    """Models with ``model.temporal`` members: epochs of fitting each sequence member on the frozen CNN features of
    the labelled rows (Adam, all windows every epoch), after the CNN is trained."""
    temporal_lr: float = 1e-3
    """Learning rate of that fit."""
    schedule: str = "cosine"
    """LR schedule over the epoch budget, stepped every optimiser step: ``cosine`` (FixMatch's ``cos(7πk/16K)``),
    ``onecycle`` (torch's OneCycleLR with max LR ``lr``: 30 % warm-up from lr/25, cosine down to lr/2.5e5, momentum
    cycled 0.95 → 0.85 → 0.95) or ``warmup_cosine`` (linear warm-up over ``warmup_epochs``, then cosine to 0)."""
    warmup_epochs: float = 0.0
    """Linear warm-up length of ``warmup_cosine``, in epochs."""
    label_smoothing: float = 0.0
    """Label smoothing of the supervised cross-entropy (plain and ESR heads): targets ``(1-ε)·onehot + ε/C``."""
    soft_labels: bool = False
    """Pseudo-labelled rows learn the teacher's probabilities (its score part, sharpened by ``soft_temperature``)
    with a soft cross-entropy ``-Σ_c t_c log p_c`` instead of its argmax; selection still decides which rows enter,
    and labelled rows keep their labels. Linear head only."""
    soft_temperature: float = 1.0
    """Sharpening of the soft pseudo-labels: ``t = p^(1/T) / Σ p^(1/T)``; 1 = the teacher's probabilities, < 1
    sharper (MixMatch's 0.5), towards the argmax as T → 0."""
    distill: bool = False
    """Knowledge distillation from the round's teacher (rounds ≥ 1; set it as ``student.train.distill`` so that
    round 0's fingerprint stays that of a plain supervised student): every pool row the round scored, selected or
    not, carries the teacher's probabilities, and each step also draws ``mu × batch_size`` of them (the pool stream,
    cycled) whose strong view the student learns with Hinton's term ``T² · KL(p_T ‖ softmax(z / T))``, ``p_T`` the
    teacher's probabilities at ``T = distill_temperature``; ``L = L_s + distill_weight · L_d``. Rows that pass the
    thresholds keep their hard label and weight in ``L_s``. Not with ``online_policy`` (both draw the pool)."""
    distill_temperature: float = 2.0
    """The distillation temperature T (> 0): ``p_T ∝ p^(1/T)``; > 1 softens the teacher, 1 = its probabilities."""
    distill_weight: float = 1.0
    """Weight of the distillation term in the step loss (≥ 0)."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights, updated after every step with decay ``min(d, (1+k)/(10+k))`` at
    step k; 0 = off. When on, the EMA weights (with the model's BN statistics) are what is validated, saved,
    scored and promoted."""
    select_best: bool = False
    """Evaluate val macro-F1 after each epoch from ``val_from`` on and keep the best epoch's weights (recorded as
    ``best_epoch`` / ``best_val_macro_f1``); off: the last epoch is kept. Needs a val split in the campaign."""
    val_from: float = 0.5
    """With ``select_best``: the first epoch evaluated, as a fraction of ``epochs`` (val costs a forward pass over
    the split per evaluated epoch; early epochs of a decaying schedule rarely win)."""
    tta_flip: bool = False
    """With ``select_best``: validate with flip TTA (mean of the image and its mirror), as ``eval.tta_flip``."""
    torch_threads: int = 0
    """torch intra-op threads per worker; 0 = the worker's share of its node's cores (cores // workers on the node).
    Ray still reserves one logical CPU per worker, so Ray Data can read while the worker trains."""
    cache_mb: int = 2048
    """Decode labelled ∪ pseudo once per round into worker memory (uint8) when it fits in this many MiB per worker;
    larger sets stream from the shards every epoch, decoding per batch. 0 = always stream."""

    def __post_init__(self) -> None:
        _check_positive("train.epochs", self.epochs)
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.mu", self.mu)
        _check_positive("train.num_workers", self.num_workers)
        if self.in_process and self.num_workers != 1:
            raise ConfigError(
                "train.in_process=true trains one worker in the driver; set train.num_workers=1 "
                f"(got {self.num_workers})"
            )
        _check_positive("train.temporal_epochs", self.temporal_epochs)
        for key in ("lr", "temporal_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        for key in ("weight_decay", "lambda_u", "fine_weight", "diversity_weight", "diversity_gamma", "va_weight"):
            _check_range(f"train.{key}", getattr(self, key), 0.0, float("inf"))
        _check_range("train.max_failures", self.max_failures, 0, 1000)
        _check_choice("train.optimizer", self.optimizer, ("sgd", "adamw"))
        _check_choice("train.schedule", self.schedule, SCHEDULES)
        _check_range("train.warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _check_range("train.ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        for key in ("soft_temperature", "distill_temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        _check_range("train.distill_weight", self.distill_weight, 0.0, float("inf"))
        if self.distill and self.online_policy is not None:
            raise ConfigError(
                f"train.distill=true and train.online_policy={self.online_policy!r} both draw the pool each step; "
                "set one of them"
            )
        _check_range("train.val_from", self.val_from, 0.0, 1.0)
        _check_range("train.torch_threads", self.torch_threads, 0, 4096)
        _check_range("train.cache_mb", self.cache_mb, 0, 1 << 30)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation of a checkpoint on the campaign's val and test splits."""

    splits: tuple[str, ...] = ("val", "test")
    """Splits evaluated after each round."""
    batch_size: int = 512
    """Images per forward pass."""
    tta_flip: bool = False
    """Average the probabilities of the image and its horizontal flip (as ``score.tta_flip``)."""
    in_process_rows: int = 5000
    """A split with at most this many rows to predict (evaluation, a threshold policy's val reference) is predicted
    in the driver instead of by one Ray task per shard when Ray is not running yet (``jobs/evaluate.py``): the same
    function and one torch thread either way, so the same bytes, without starting Ray. Once Ray runs (a campaign
    after its first Ray stage) its workers are used. 0 = always Ray; on a cluster (``RAY_ADDRESS`` set) Ray is
    always used."""

    def __post_init__(self) -> None:
        _check_positive("eval.batch_size", self.batch_size)
        _check_range("eval.in_process_rows", self.in_process_rows, 0, 1 << 40)
        for split in self.splits:
            _check_choice("eval.splits", split, ("val", "test"))


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """MLflow tracking."""

    uri: str | None = None
    """Tracking URI; None means a sqlite store under the storage root."""
    experiment: str = "fer-pseudolabel"
    """MLflow experiment of the campaign runs (created on first use)."""
    log_models: bool = True
    """Log each round's student as an MLflow model (engine.tracking.pyfunc_model), registered under the campaign's
    name; the registry alias ``champion`` follows the campaign's teacher."""


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """The round's self-contained ``report.html`` (engine/products/report/), written at the end of every round."""

    enabled: bool = True
    """Write the report (and log it to MLflow) at the end of each round."""
    gallery_per_class: int = 8
    """Images per class in each gallery (confident, just above / below the threshold, confident mistakes)."""
    hist_bins: int = 50
    """Bins of the per-class confidence histograms (the score statistics' fine bins are summed into these)."""
    max_clusters: int = 12
    """Duplicate / leakage clusters listed per source (largest first); counts always cover every cluster."""

    def __post_init__(self) -> None:
        _check_positive("report.gallery_per_class", self.gallery_per_class)
        _check_positive("report.hist_bins", self.hist_bins)
        _check_positive("report.max_clusters", self.max_clusters)


@dataclass(frozen=True, kw_only=True)
class CurationConfig:
    """Label-issue flags on the labelled set (engine/stages/curation.py): out-of-fold probabilities → cleanlab."""

    label_issues: bool = False
    """At the end of each round, write ``curation/label_issues.parquet`` (needs the ``curation`` extra: cleanlab)."""
    folds: int = 5
    """K of the stratified K-fold cross-validation that gives every labelled sample out-of-fold probabilities."""
    epochs: int | None = None
    """Epochs per fold; None uses ``train.epochs``."""
    filter_by: str = "prune_by_noise_rate"
    """cleanlab ``find_label_issues`` method: prune_by_noise_rate, prune_by_class, both, confident_learning,
    predicted_neq_given."""

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"curation.folds must be >= 2 for cross-validation, got {self.folds}")
        if self.epochs is not None:
            _check_positive("curation.epochs", self.epochs)
        _check_choice(
            "curation.filter_by",
            self.filter_by,
            ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"),
        )


REVIEW_RULES = ("margin", "entropy", "disagreement", "near_threshold", "label_issues", "random")
"""How a review batch ranks faces (engine/review/rules.py); ``label_issues`` re-checks the labelled set, the others
rank the pool."""


@dataclass(frozen=True, kw_only=True)
class ReviewConfig:
    """Review batches: before its selection, a round asks people to label the faces it needs most (docs/review.md).
    With ``size`` > 0 a campaign stops at each round ≥ 1 after threshold, with a batch waiting for people, and goes on
    once their answers are imported (``fer-engine review import``)."""

    size: int = 0
    """Faces per batch (B); 0: campaigns ask for none (``fer-engine review export`` still makes one on demand)."""
    rule: str = "random"
    """random (the baseline, and the default: no rule beat it on val in bench/active_fer2013.py), margin (smallest
    top-1 − top-2), entropy, disagreement (members, branches or flip views), near_threshold (just under the class
    threshold), label_issues (labelled rows curation flags)."""
    per_class_quota: bool = True
    """Share the batch equally among the teacher's predicted classes (a class with too few faces gives its share to
    the others), so rare classes get their part."""
    min_phash_distance: int = 0
    """Diversity: no two faces of a batch within this pHash Hamming distance (0: off; 6 drops near-duplicates)."""
    seed: int = 0
    """Seed of the ``random`` rule (a seeded hash of each key, so a batch is the same on every machine)."""

    def __post_init__(self) -> None:
        _check_range("review.size", self.size, 0, 1_000_000)
        _check_choice("review.rule", self.rule, REVIEW_RULES)
        _check_range("review.min_phash_distance", self.min_phash_distance, 0, 64)


PRETRAIN_METHODS = ("simsiam", "byol")
"""Self-supervised methods of ``campaign.pretrain.method`` (engine.train.pretrain)."""


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Self-supervised pretraining of round 0's backbone on the faces of the campaign's sources (their train and
    unlabelled splits, images only, never labels) before any label is used (engine/stages/pretrain.py, on Ray Train,
    resumable per epoch). Round 0's student (every member) starts from the pretrained backbone with a fresh
    classifier. The run is stored once per storage root under ``pretrain/<fingerprint>/``: campaigns with other seeds
    or labelled fractions over the same sources share it."""

    method: str | None = None
    """``simsiam`` (two views, a predictor and a stop-gradient; Chen & He 2021), ``byol`` (the same with an EMA target
    network; Grill et al. 2020) or null: no pretraining."""
    epochs: int = 20
    """Passes over the pretraining images (two views of each per pass)."""
    batch_size: int = 256
    """Faces per step of each worker (each seen as two views)."""
    lr: float = 0.05
    """Peak learning rate (SGD, momentum 0.9, Nesterov) of a linear warm-up then cosine schedule to 0."""
    weight_decay: float = 1e-4
    """Weight decay of weight matrices and kernels."""
    warmup_epochs: float = 1.0
    """Linear warm-up, in epochs."""
    proj_dim: int = 512
    """Width of the projector's output (and hidden layer)."""
    pred_dim: int = 128
    """Hidden width of the predictor (a bottleneck, as in SimSiam)."""
    target_decay: float = 0.99
    """BYOL: EMA decay of the target network, raised to 1 over the run with a cosine (ignored by simsiam)."""
    crop_min_scale: float = 0.3
    """Each view is a random crop of this fraction of the face's area up to all of it (aspect 3/4 to 4/3), resized
    back, mirrored with probability 0.5."""
    jitter: float = 0.4
    """Brightness and contrast of each view are scaled by factors drawn in [1 - jitter, 1 + jitter] (with probability
    0.8); 0 turns it off."""
    max_images: int | None = None
    """At most this many faces (seeded, by key hash); null = all. The decoded faces are held in memory (48x48 grey:
    2.3 KB each, 2.3 GB per million)."""
    num_workers: int = 1
    """Ray Train workers (data-parallel, DDP)."""
    in_process: bool = False
    """Run the loop in the driver (Ray Train's local mode), as ``train.in_process``."""
    max_failures: int = 1
    """Ray Train restarts of a failed run from its last epoch checkpoint."""
    seed: int = 0
    """Seed of the initial weights (the classifier's too), the epoch order and the views."""
    probe_rows: int = 5000
    """Linear probe after pretraining: a logistic regression on the frozen features of up to this many labelled train
    faces of the labelled sources, scored on up to this many of their val faces (macro-F1), beside the same probe on
    the untrained net: whether the features learnt anything before fine-tuning. 0 = no probe."""

    def __post_init__(self) -> None:
        if self.method is not None:
            _check_choice("campaign.pretrain.method", self.method, PRETRAIN_METHODS)
        _check_range("campaign.pretrain.epochs", self.epochs, 1, 100_000)
        _check_range("campaign.pretrain.batch_size", self.batch_size, 2, 1_000_000)
        _check_range("campaign.pretrain.lr", self.lr, 0.0, 100.0, hi_open=True)
        _check_range("campaign.pretrain.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("campaign.pretrain.warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_range("campaign.pretrain.proj_dim", self.proj_dim, 1, 65_536)
        _check_range("campaign.pretrain.pred_dim", self.pred_dim, 1, 65_536)
        _check_range("campaign.pretrain.target_decay", self.target_decay, 0.0, 1.0)
        _check_range("campaign.pretrain.crop_min_scale", self.crop_min_scale, 0.05, 1.0)
        _check_range("campaign.pretrain.jitter", self.jitter, 0.0, 1.0, hi_open=True)
        if self.max_images is not None:
            _check_range("campaign.pretrain.max_images", self.max_images, 2, 10**12)
        _check_range("campaign.pretrain.num_workers", self.num_workers, 1, 4096)
        if self.in_process and self.num_workers != 1:
            raise ConfigError("campaign.pretrain.in_process=true runs one worker; set campaign.pretrain.num_workers=1")
        _check_range("campaign.pretrain.max_failures", self.max_failures, 0, 1000)
        _check_range("campaign.pretrain.probe_rows", self.probe_rows, 0, 10**9)


@dataclass(frozen=True, kw_only=True)
class CampaignConfig:
    """Which data plays which role, and how many rounds."""

    name: str = "default"
    """Campaign name: its folder under ``<root>/campaigns/``, its MLflow run and registered model name."""
    labelled: tuple[str, ...] = ()
    """Sources whose train split is labelled."""
    unlabelled: tuple[str, ...] = ()
    """Sources whose rows form the unlabelled pool (their labels, if any, are hidden)."""
    eval: tuple[str, ...] = ()
    """Sources whose val/test splits are evaluated; empty means the labelled sources."""
    labelled_fraction: float | None = None
    """Keep a seeded, class-stratified fraction of the labelled train split as labelled; the rest joins the pool."""
    max_labelled: int | None = None
    """At most this many labelled rows (seeded, by key hash; demos and tests)."""
    max_unlabelled: int | None = None
    """At most this many pool rows (seeded, by key hash; demos and tests)."""
    max_eval: int | None = None
    """At most this many val and test rows each (seeded, by key hash; demos and tests)."""
    rounds: int = 1
    """Pseudo-label rounds after round 0 (the first teacher): the campaign runs rounds 0..rounds."""
    seed: int = 0
    """Seed of the labelled fraction, the caps, the pool / eval membership and curation's folds."""
    teacher_checkpoint: str | None = None
    """Round-0 teacher checkpoint instead of training one on the labelled set."""
    teacher_members: int = 1
    """Round 0 trains this many students on the labelled set, member i with ``train.seed + i``, and round 1's teacher
    is their ensemble (mean probabilities; ``score.tta_flip`` applies to each): a better teacher from the same labels.
    Round 0 is evaluated as the ensemble (each member's metrics beside it), so a later student is promoted only when
    it beats the ensemble on val. Later teachers are the promoted student alone."""
    stop_when_no_gain: bool = True
    """Stop the campaign when a student does not beat its teacher on val macro-F1."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Self-supervised pretraining of round 0's backbone (``campaign.pretrain.method``; off by default)."""

    def __post_init__(self) -> None:
        if self.labelled_fraction is not None and not 0 < self.labelled_fraction <= 1:
            raise ConfigError(f"campaign.labelled_fraction must be in (0, 1] or null, got {self.labelled_fraction}")
        for key in ("max_labelled", "max_unlabelled", "max_eval"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"campaign.{key} must be positive or null, got {value}")
        _check_range("campaign.rounds", self.rounds, 0, 10_000)
        _check_range("campaign.teacher_members", self.teacher_members, 1, 64)
        if self.teacher_members > 1 and self.teacher_checkpoint:
            raise ConfigError(
                "campaign.teacher_members > 1 trains round 0's members, but campaign.teacher_checkpoint skips "
                "round 0's training: set one of them"
            )
        if self.pretrain.method and self.teacher_checkpoint:
            raise ConfigError(
                "campaign.pretrain.method pretrains round 0's backbone, but campaign.teacher_checkpoint skips "
                "round 0's training: set one of them"
            )


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The students of rounds 1, 2, ... (Noisy Student: a larger or noisier student, or another budget): ``model``
    and ``train`` keys that replace the base sections' from round 1 on; round 0's teacher keeps the base sections.
    Checked when the config loads, like the base keys (``student.model.width=32`` names itself in errors)."""

    model: dict[str, Any] = field(default_factory=dict)
    """E.g. ``{width: 24, drop_rate: 0.5}`` or another ``name``: a student larger than its teacher."""
    train: dict[str, Any] = field(default_factory=dict)
    """E.g. ``{epochs: 12}``: a warm-started student's budget."""


WARM_START_FREE = ("drop_rate", "pretrained", "weights")
"""``model`` keys that change how a net is initialised or regularised, not its weights' shapes: a student that
differs from its teacher only in these can still start from the teacher's weights (``train.warm_start``)."""


def same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether nets built from ``a`` and ``b`` have the same weights (every key but :data:`WARM_START_FREE`)."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return all(da[k] == db[k] for k in da if k not in WARM_START_FREE)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole engine configuration."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def for_round(self, index: int) -> Config:
        """The config that trains round ``index``'s student: this one for round 0; from round 1 on, ``student.model``
        and ``student.train`` over ``model`` and ``train`` (an error names a bad ``student.*`` key)."""
        s = self.student
        if index < 1 or not (s.model or s.train):
            return self
        where = "the student section"
        try:
            model = build(ModelConfig, {**to_dict(self.model), **s.model}, where=where, prefix="student.model.")
            train = build(TrainConfig, {**to_dict(self.train), **s.train}, where=where, prefix="student.train.")
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith("unknown key") else f"student (rounds >= 1): {msg}") from None
        return dataclasses.replace(self, model=model, train=train)

    def source(self, name: str) -> SourceConfig:
        """The source called ``name``; an unknown name is a ConfigError listing the known ones."""
        if name not in self.sources:
            raise ConfigError(
                f"unknown source {name!r}{_suggest(name, self.sources)}; "
                f"configured: {', '.join(self.sources) or 'none'}"
            )
        return self.sources[name]


# ---------------------------------------------------------------- loading


ADDED_LATER: dict[str, tuple[str, ...]] = {
    "model": ("weights",),
    "threshold": ("target_precision", "min_support"),
    "select": ("weighting", "min_weight"),
    "train": ("distill", "distill_temperature", "distill_weight"),
}
"""Per section, keys added after campaigns were committed: a stage fingerprints them only when they differ from
their defaults, so the stages committed before a key existed keep their fingerprints."""


def fingerprint_fields(section: str, cfg: Any) -> dict[str, Any]:
    """A config section as stages fingerprint it: every field, except :data:`ADDED_LATER` keys at their defaults."""
    out = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key in ADDED_LATER.get(section, ()):
        if out[key] == defaults[key]:
            del out[key]
    return out


def model_fingerprint_fields(cfg: ModelConfig) -> dict[str, Any]:
    """``model`` as stages fingerprint it: ``weights`` only when set (campaigns from before the key stay valid)."""
    return fingerprint_fields("model", cfg)


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Build a Config from dataclass defaults, YAML files (in order) and ``a.b=c`` overrides.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a wrong type or an invalid value.
    """
    merged: dict[str, Any] = {}
    origin = "defaults"
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist (or is not a file); give the path of a YAML file")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:  # also tags such as !!python/object, which safe_load never constructs
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{path}: not a plain YAML config{at}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        _deep_merge(merged, data)
        origin = str(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML; quote it") from None
        _set_path(merged, key.strip().split("."), value)
    cfg = _absolute_local_paths(build(Config, merged, where=origin))
    cfg.for_round(1)  # student.* keys checked now, not when round 1 starts
    root = cfg.storage.root
    if "://" not in root and os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"storage.root {root} is a file, not a folder; give a folder (it is created if missing)")
    return cfg


def config_origins(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict[str, str]:
    """``flattened key → where its value came from``: the last ``--config`` file that sets it, or ``--set``.

    Keys that neither sets keep their dataclass defaults and are absent. Call after :func:`load_config` has accepted
    the same arguments (this re-reads them without checking).
    """
    out: dict[str, str] = {}
    for path in paths:
        data = yaml.safe_load(Path(path).read_text()) or {}
        out |= dict.fromkeys(flatten(data), str(path))
    for item in overrides:
        key, _, raw = item.partition("=")
        value = yaml.safe_load(raw) if raw.strip() else None
        keys = flatten(value, f"{key.strip()}.") if isinstance(value, dict) else {key.strip(): value}
        out |= dict.fromkeys(keys, "--set")
    return out


def _absolute_local_paths(cfg: Config) -> Config:
    """Local storage root, round-0 checkpoint and weight files made absolute against the working directory at load.

    Ray workers do not share the driver's working directory (Ray Train runs each worker in its own), so a relative
    ``runs/demo`` would name another place inside them. URIs (``s3://…``) are left as they are.
    """

    def absolute(p: str) -> str:
        return p if "://" in p else os.path.abspath(p)

    c = cfg.campaign
    weights = cfg.student.model.get("weights")
    student = cfg.student
    if isinstance(weights, str) and weights:
        student = dataclasses.replace(student, model={**student.model, "weights": absolute(weights)})
    return dataclasses.replace(
        cfg,
        student=student,
        storage=dataclasses.replace(cfg.storage, root=absolute(cfg.storage.root)),
        model=dataclasses.replace(cfg.model, weights=absolute(cfg.model.weights) if cfg.model.weights else None),
        campaign=dataclasses.replace(
            c, teacher_checkpoint=absolute(c.teacher_checkpoint) if c.teacher_checkpoint else None
        ),
    )


def build(cls: type[T], data: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types raise)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown key {dotted!r} in {where}{_suggest(key, fields, prefix)}; valid: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(hints[key], value, dotted, where)
    if cls is Config and "sources" in kwargs:
        kwargs["sources"] = {n: dataclasses.replace(s, name=n) for n, s in kwargs["sources"].items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} in {where}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain JSON-able view of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flattened ``a.b.c -> value`` view (for MLflow params)."""
    out: dict[str, Any] = {}
    plain = to_dict(obj)
    if isinstance(plain, dict):
        for k, v in plain.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} in {where} must be a mapping, got {value!r}")
        return build(cast(type, tp), value, where=where, prefix=f"{key}.")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} in {where} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", where) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} in {where} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, key, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key} in {where} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = dict(v) if isinstance(v, Mapping) else v


def _set_path(dst: dict[str, Any], parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        dst = dst.setdefault(p, {})
        if not isinstance(dst, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {p} is not a section")
    dst[parts[-1]] = value


def _suggest(key: str, valid: Mapping[str, Any] | Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}{_suggest(value, choices)}")


SCHEDULES = ("cosine", "onecycle", "warmup_cosine")
"""The LR schedules of ``train.schedule`` (engine.train.optim.build_scheduler)."""


def _check_range(key: str, value: float, lo: float, hi: float, *, hi_open: bool = False) -> None:
    if not (lo <= value < hi if hi_open else lo <= value <= hi):
        raise ConfigError(f"{key} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")
