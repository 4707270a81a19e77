"""Every path of the storage layout, in one place (docs/concepts.md, "Storage layout")."""

from __future__ import annotations

from dataclasses import dataclass

SUCCESS = "_SUCCESS.json"
METRICS = "metrics.json"
"""The evaluate stage's metrics file, in its output directory (``eval/`` of a round)."""


def confusion_name(split: str) -> str:
    """The evaluate stage's confusion-matrix plot of one split, in its output directory."""
    return f"confusion_{split}.png"


def shard_name(source: str, index: int) -> str:
    """``<source>-000123``: the id of one WebDataset shard."""
    return f"{source}-{index:06d}"


def parse_shard(name: str) -> tuple[str, int]:
    """``(source, index)`` of a shard id ``<source>-000123``: the inverse of :func:`shard_name`."""
    source, sep, idx = name.rpartition("-")
    if not (sep and source and idx.isdigit()):
        raise ValueError(f"{name!r} is not a shard id <source>-<index>")
    return source, int(idx)


def shard_tar(root: str, shard: str) -> str:
    """The tar of the shard id ``shard`` under ``root``."""
    source, index = parse_shard(shard)
    return SourceLayout(root, source).shard(index)


def parse_shard_url(url: str) -> tuple[str, str]:
    """``(storage root, shard id)`` of a shard tar ``<root>/sources/<source>/shards/<source>-000123.tar``."""
    root, sep, rest = url.rpartition("/sources/")
    if not sep or not rest.endswith(".tar"):
        raise ValueError(f"{url!r} is not a shard tar <root>/sources/<source>/shards/<id>.tar")
    return root, rest.rsplit("/", 1)[-1].removesuffix(".tar")


def video_id(source: str, group: str | None, frame: int | None) -> str | None:
    """``<source>/<group>``, the id of the video a manifest row belongs to, or None for a row outside any video (no
    group or no frame). Scoring, evaluation and the fit of sequence members all group rows by it."""
    return None if group is None or frame is None else f"{source}/{group}"


def round_name(index: int) -> str:
    """``r003``: the id of one round."""
    return f"r{index:03d}"


ROUND_STAGES = ("score", "threshold", "review", "reviewed", "select", "train", "members", "evaluate", "curation")
"""Every stage a round can have, in the order they run."""


def round_stage_names(
    index: int,
    *,
    teacher_checkpoint: bool,
    label_issues: bool,
    review: bool = False,
    reviewed: bool = False,
    members: bool = False,
) -> tuple[str, ...]:
    """The stages round ``index`` runs: score → threshold (rounds > 0) → review (a batch for people, rounds > 0 with
    ``review``) → reviewed (the labelled set with people's answers, when ``reviewed``: answers are committed for this
    round or an earlier one) → select (rounds > 0), train (unless round 0 starts from a given teacher checkpoint),
    members (round 0's other ensemble members, with ``members``: ``campaign.teacher_members`` > 1), evaluate,
    curation (with ``curation.label_issues``)."""
    return tuple(
        s
        for s in ROUND_STAGES
        if (index > 0 or s not in ("score", "threshold", "select", "review"))
        and (s != "train" or index > 0 or not teacher_checkpoint)
        and (s != "members" or (index == 0 and members and not teacher_checkpoint))
        and (s != "curation" or label_issues)
        and (s != "review" or review)
        and (s != "reviewed" or reviewed)
    )


def join(*parts: str) -> str:
    """Join path parts with ``/`` (works for local paths and URIs alike)."""
    return "/".join(p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts) if p)


def score_part(score_dir: str, shard: str) -> str:
    """The score part of one shard in a round's score directory (``RoundLayout.score_part``)."""
    return join(score_dir, f"part-{shard}.parquet")


def stored_path(root: str, path: str) -> str:
    """How a file is named in the root's own records (``campaign.json``, ``round.json``, ``rule.json``): relative to
    ``root`` when it lies inside it, so a copied root (``cp -a``) refers to its own files; a file outside the root (a
    given teacher checkpoint) keeps its absolute path. The inverse is :func:`root_path`."""
    base = root.rstrip("/") + "/"
    return path[len(base) :] if path.startswith(base) else path


def root_path(root: str, stored: str) -> str:
    """The path a record names: a relative ``stored`` path resolved against ``root``; absolute paths and URIs as
    they are (records written before roots were relocatable hold absolute paths)."""
    return stored if stored.startswith("/") or "://" in stored else join(root, stored)


@dataclass(frozen=True)
class SourceLayout:
    """Paths of one ingested source."""

    root: str
    source: str

    @property
    def dir(self) -> str:
        return join(self.root, "sources", self.source)

    @property
    def shards_dir(self) -> str:
        return join(self.dir, "shards")

    def shard(self, index: int) -> str:
        return join(self.shards_dir, f"{shard_name(self.source, index)}.tar")

    @property
    def manifest_dir(self) -> str:
        return join(self.dir, "manifest")

    def manifest_part(self, index: int) -> str:
        return join(self.manifest_dir, f"part-{index:06d}.parquet")

    @property
    def quarantine(self) -> str:
        return join(self.dir, "quarantine.parquet")

    @property
    def duplicates(self) -> str:
        return join(self.dir, "duplicates.parquet")

    @property
    def success(self) -> str:
        return join(self.dir, SUCCESS)

    @property
    def work_dir(self) -> str:
        """Intermediate per-part files of an ingest in progress; safe to delete once committed."""
        return join(self.dir, "_work")

    def listing_part(self, index: int) -> str:
        return join(self.work_dir, "listing", f"part-{index:06d}.parquet")

    def decoded_part(self, index: int) -> str:
        return join(self.work_dir, "decoded", f"part-{index:06d}.parquet")


def student_index(root: str, content_key: str) -> str:
    """The store-wide record of a committed student by the content of what it was trained on
    (``TrainStage.content_key``): ``<root>/index/students/<key>.json``, naming the train directory that holds it."""
    return join(root, "index", "students", f"{content_key}.json")


@dataclass(frozen=True)
class CampaignLayout:
    """Paths of one campaign and its rounds."""

    root: str
    campaign: str

    @property
    def dir(self) -> str:
        return join(self.root, "campaigns", self.campaign)

    @property
    def state(self) -> str:
        return join(self.dir, "campaign.json")

    @property
    def config(self) -> str:
        return join(self.dir, "config.json")

    @property
    def partition_dir(self) -> str:
        """Which keys are labelled / unlabelled / eval in this campaign."""
        return join(self.dir, "partition")

    @property
    def labelled(self) -> str:
        """The labelled set the partition stage commits: (key, shard, label, ...) rows."""
        return join(self.partition_dir, "labelled.parquet")

    @property
    def rule(self) -> str:
        """The partition rule (pool / eval membership parameters) the partition stage commits."""
        return join(self.partition_dir, "rule.json")

    def round(self, index: int) -> RoundLayout:
        return RoundLayout(join(self.dir, "rounds", round_name(index)), index)


@dataclass(frozen=True)
class RoundLayout:
    """Paths of one round."""

    dir: str
    index: int

    @property
    def score_dir(self) -> str:
        return join(self.dir, "score")

    def score_part(self, shard: str) -> str:
        return score_part(self.score_dir, shard)

    @property
    def score_stats(self) -> str:
        return join(self.score_dir, "stats.json")

    @property
    def threshold_dir(self) -> str:
        return join(self.dir, "threshold")

    @property
    def thresholds(self) -> str:
        return join(self.dir, "thresholds.json")

    @property
    def select_dir(self) -> str:
        return join(self.dir, "select")

    @property
    def selection(self) -> str:
        return join(self.select_dir, "selection.parquet")

    @property
    def quality(self) -> str:
        return join(self.select_dir, "quality.json")

    @property
    def train_dir(self) -> str:
        return join(self.dir, "train")

    @property
    def student(self) -> str:
        return join(self.train_dir, "student.pt")

    @property
    def members_dir(self) -> str:
        """Round 0's other ensemble members (``campaign.teacher_members``), one train stage folder each."""
        return join(self.dir, "members")

    def member_dir(self, member: int) -> str:
        """The train stage folder of member ``member`` (1, 2, ...; member 0 is the round's student, ``train_dir``)."""
        return join(self.members_dir, f"m{member}")

    @property
    def eval_dir(self) -> str:
        return join(self.dir, "eval")

    @property
    def metrics(self) -> str:
        return join(self.eval_dir, METRICS)

    def confusion_png(self, split: str) -> str:
        return join(self.eval_dir, confusion_name(split))

    @property
    def online_pool(self) -> str:
        """The unlabelled pool of the online branch, (key, shard, label=-1, idx): an input the train stage writes."""
        return join(self.train_dir, "online_pool.parquet")

    @property
    def curation_dir(self) -> str:
        return join(self.dir, "curation")

    @property
    def review_dir(self) -> str:
        """The review batch people are asked to label (a ready Label Studio project, docs/review.md)."""
        return join(self.dir, "review")

    @property
    def review_batch(self) -> str:
        """The faces of the review batch, one row each, with the rule's score (``REVIEW_BATCH_SCHEMA``)."""
        return join(self.review_dir, "batch.parquet")

    @property
    def answers_dir(self) -> str:
        """People's answers to the round's review batch, as imported (``fer-engine review import``)."""
        return join(self.dir, "answers")

    @property
    def answers(self) -> str:
        return join(self.answers_dir, "answers.parquet")

    @property
    def reviewed_dir(self) -> str:
        """The round's labelled set: the partition's, with every imported answer up to this round applied."""
        return join(self.dir, "reviewed")

    @property
    def reviewed_labelled(self) -> str:
        return join(self.reviewed_dir, "labelled.parquet")

    @property
    def reviewed_removed(self) -> str:
        """Keys people said are not a face: out of the labelled set and of the pool's selection."""
        return join(self.reviewed_dir, "removed.parquet")

    def stage_dir(self, stage: str) -> str:
        """The output directory of the round stage named ``stage`` (one of :data:`ROUND_STAGES`)."""
        dirs = {
            "score": self.score_dir,
            "threshold": self.threshold_dir,
            "select": self.select_dir,
            "train": self.train_dir,
            "members": self.members_dir,
            "evaluate": self.eval_dir,
            "curation": self.curation_dir,
            "review": self.review_dir,
            "reviewed": self.reviewed_dir,
        }
        return dirs[stage]

    @property
    def report(self) -> str:
        return join(self.dir, "report.html")

    @property
    def state(self) -> str:
        return join(self.dir, "round.json")
