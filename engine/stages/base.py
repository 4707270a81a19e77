"""The stage contract, written once: one constructor (a :class:`StageContext`), declared inputs and outputs,
fingerprint, skip, mismatch policy, run, ``_SUCCESS.json`` last."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from engine import __version__
from engine.config import Config, flatten
from engine.errors import ConfigError, CorruptFile, EngineError, FingerprintMismatch
from engine.fingerprint import fingerprint, short
from engine.io import fs
from engine.io.checksums import Problem, check_dir, digest_dir
from engine.io.lock import writer_lock
from engine.layout import SUCCESS, CampaignLayout, RoundLayout, join, root_path, round_name
from engine.runtime import init_ray, require

if TYPE_CHECKING:
    from engine.labels import LabelSpace
    from engine.partition_rule import PartitionRule

log = logging.getLogger(__name__)

RUNNING = "_RUNNING.json"


@dataclass(frozen=True)
class StageResult:
    """What a committed stage reports: its fingerprint, counts and extras (all JSON-able)."""

    stage: str
    fingerprint: str
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> StageResult:
        """Rebuild the result stored in a ``_SUCCESS.json``."""
        return cls(
            stage=marker["stage"],
            fingerprint=marker["fingerprint"],
            counts=marker.get("counts", {}),
            extra=marker.get("extra", {}),
            seconds=marker.get("seconds", 0.0),
            skipped=True,
        )


@dataclass(frozen=True)
class TeacherRef:
    """The checkpoint(s) scoring a round and their combined fingerprint."""

    paths: tuple[str, ...]
    fingerprint: str
    round: int = -1

    @classmethod
    def from_record(cls, root: str, record: Mapping[str, Any]) -> TeacherRef:
        """The teacher a ``campaign.json`` or ``round.json`` record names (its paths stored relative to ``root``)."""
        paths = tuple(root_path(root, p) for p in record["paths"])
        return cls(paths, str(record["fingerprint"]), int(record.get("round", -1)))


@dataclass(frozen=True)
class StageContext:
    """Everything a stage is built from, the same for every stage: the config (with the storage root), where in
    the campaign it runs (``round``, or ``source`` for ingest), the committed results of the stages upstream of it
    by name (``ingest:<source>``, ``partition``, ``score``, ``threshold``, ``select``, ``train``), the round's
    teacher and the MLflow run its per-epoch metrics go to. Stages read their upstream outputs from committed files
    through the layout; the context only says which commits those are."""

    cfg: Config
    round: int | None = None
    source: str | None = None
    upstream: Mapping[str, StageResult] = field(default_factory=dict)
    teacher: TeacherRef | None = None
    tracking: Mapping[str, str] | None = None
    """``{"tracking_uri", "run_id"}`` of the round's MLflow run, or None."""

    @property
    def root(self) -> str:
        return self.cfg.storage.root

    @property
    def campaign(self) -> CampaignLayout:
        return CampaignLayout(self.root, self.cfg.campaign.name)

    @property
    def round_layout(self) -> RoundLayout:
        if self.round is None:
            raise EngineError("a round stage was given a context without a round")
        return self.campaign.round(self.round)

    @functools.cached_property
    def space(self) -> LabelSpace:
        """The campaign's label space (that of its labelled sources)."""
        from engine.labels import campaign_space

        return campaign_space(self.cfg)

    @functools.cached_property
    def rule(self) -> PartitionRule:
        """The campaign's committed partition rule."""
        from engine.partition_rule import load_rule

        return load_rule(self.root, self.cfg.campaign.name)

    @property
    def labelled_path(self) -> str:
        """The labelled set select and train read: the round's ``reviewed`` set (the partition's with people's answers
        applied, engine/stages/review.py) when that stage is upstream, else the partition's."""
        if "reviewed" in self.upstream:
            return self.round_layout.reviewed_labelled
        return self.rule.labelled_keys_path

    def fingerprint_of(self, name: str) -> str:
        """The fingerprint of the committed upstream stage ``name``."""
        if name not in self.upstream:
            raise EngineError(f"upstream stage {name!r} is not committed in this context ({sorted(self.upstream)})")
        return self.upstream[name].fingerprint

    def with_result(self, name: str, result: StageResult) -> StageContext:
        """This context with one more committed upstream stage."""
        return dataclasses.replace(self, upstream={**self.upstream, name: result})


@dataclass
class RunOutput:
    """What ``Stage.run`` returns; ``execute`` commits it into ``_SUCCESS.json``."""

    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One stage of the pipeline with an output directory it alone writes, built from a :class:`StageContext`.

    Subclasses declare ``name`` and ``VERSION`` (bump by hand when the meaning of the outputs changes), their output
    directory (``out_dir``), the upstream stages they read (``inputs``), the files they commit (``outputs``), what
    they run on (``resources``) and whether they need Ray at all (``RAY``); they return the config subset and
    upstream digests they depend on from ``fingerprint_inputs`` and do the work in ``run``, which reads its inputs
    from committed files, writes every file atomically and never writes ``_SUCCESS.json``.
    """

    name: ClassVar[str]
    VERSION: ClassVar[int] = 1
    RAY: ClassVar[bool] = True
    """Whether ``run`` needs Ray: it is started (or joined) just before such a stage runs, never for a stage found
    committed, so a job whose stages are all committed never starts it. A pure-Python stage, or one that goes to Ray
    itself only when its work is large (engine.runtime.ray_started), says False."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.on_existing = ctx.cfg.storage.on_existing

    @property
    @abstractmethod
    def out_dir(self) -> str:
        """The directory this stage alone writes."""

    def inputs(self) -> tuple[str, ...]:
        """Names of the upstream stages (keys of ``ctx.upstream``) whose committed outputs this stage reads."""
        return ()

    def outputs(self) -> tuple[str, ...]:
        """The files this stage commits (besides ``_SUCCESS.json``; per-shard parts are named by their folder)."""
        return ()

    def resources(self) -> dict[str, float]:
        """What the stage's work must hold at once on the cluster (Ray resource names: one task, one actor, or a
        whole gang such as Ray Train's workers); ``execute`` refuses a stage the cluster can never hold
        (engine.runtime.require). The driver's part is 0."""
        return {}

    @property
    def label(self) -> str:
        """How logs name this stage: its name, then the round or the source."""
        where = round_name(self.ctx.round) if self.ctx.round is not None else self.ctx.source
        return f"{self.name} {where}" if where else self.name

    @abstractmethod
    def fingerprint_inputs(self) -> dict[str, Any]:
        """Config fields and upstream fingerprints this stage's outputs depend on."""

    @abstractmethod
    def run(self) -> RunOutput:
        """Do the work; per-unit outputs are atomic so a crashed run redoes only missing units."""

    @property
    def success_path(self) -> str:
        return join(self.out_dir, SUCCESS)

    def fingerprint(self) -> str:
        """sha256 over stage name, VERSION and the fingerprint inputs."""
        return fingerprint(self.name, self.VERSION, self.fingerprint_inputs())

    def committed(self) -> StageResult | None:
        """The stored result when this stage is committed with the current fingerprint, else None."""
        marker = fs.read_json_or_none(self.success_path)
        if marker and marker.get("fingerprint") == self.fingerprint():
            return StageResult.from_marker(marker)
        return None

    def execute(self) -> StageResult:
        """Skip if committed with this fingerprint, else (re)run and commit (docs/concepts.md, "The stage contract").

        The whole decision runs under the stage's writer lock (engine.io.lock): a second process on the same output
        is refused with the holder's host and pid, before it reads or writes anything there.
        """
        missing = [n for n in self.inputs() if n not in self.ctx.upstream]
        if missing:
            raise ConfigError(f"{self.label}: upstream stage(s) {missing} not committed; run them first")
        with writer_lock(self.out_dir, self.label):
            return self._execute_locked()

    def _execute_locked(self) -> StageResult:
        fp = self.fingerprint()
        inputs = self.fingerprint_inputs()
        marker = fs.read_json_or_none(self.success_path)
        if marker is not None and marker.get("fingerprint") == fp:
            problems = self._verify(marker)
            if not problems:
                log.info("%s: skipped (fingerprint %s)", self.label, short(fp))
                return StageResult.from_marker(marker)
            listed = "; ".join(f"{p.path}: {p.problem}" for p in problems[:3]) + (" …" if len(problems) > 3 else "")
            if self.on_existing != "overwrite":
                raise CorruptFile(
                    f"{self.label}: {len(problems)} committed file(s) differ from what the stage wrote ({listed}); "
                    "rebuild it: re-run with --set storage.on_existing=overwrite"
                )
            log.warning("%s: rebuilding: %d committed file(s) differ (%s)", self.label, len(problems), listed)
            fs.remove(self.out_dir)
            marker = None
        if marker is not None:
            if self.on_existing != "overwrite":
                changed = _changed_keys(marker.get("inputs", {}), inputs)
                raise FingerprintMismatch(
                    f"{self.out_dir} was committed with fingerprint {short(marker.get('fingerprint', '?'))}; the "
                    f"current config gives {short(fp)} (changed: {', '.join(changed) or 'stage version'}). Restore "
                    "the config, or re-run with --set storage.on_existing=overwrite"
                )
            log.warning("%s: fingerprint changed, overwriting %s", self.label, self.out_dir)
            fs.remove(self.out_dir)
        running = fs.read_json_or_none(join(self.out_dir, RUNNING))
        if running is not None and running.get("fingerprint") != fp:
            log.warning("%s: discarding a partial run with another fingerprint in %s", self.label, self.out_dir)
            fs.remove(self.out_dir)
        elif running is not None:
            log.info("%s: resuming a partial run (fingerprint %s)", self.label, short(fp))
        if self.RAY:
            init_ray()
        require(self.label, self.resources())
        fs.write_json(join(self.out_dir, RUNNING), {"fingerprint": fp})
        log.info("%s: running (fingerprint %s)", self.label, short(fp))
        t0 = time.perf_counter()
        out = self.run()
        seconds = round(time.perf_counter() - t0, 3)
        files = digest_dir(self.out_dir)
        fs.write_json(
            self.success_path,
            {
                "stage": self.name,
                "version": self.VERSION,
                "engine_version": __version__,
                "fingerprint": fp,
                "inputs": inputs,
                "counts": out.counts,
                "extra": out.extra,
                "seconds": seconds,
                "files": files,
            },
        )
        fs.remove(join(self.out_dir, RUNNING))
        log.info("%s: committed %s in %.1f s", self.label, _fmt_counts(out.counts), seconds)
        return StageResult(self.name, fp, out.counts, out.extra, seconds, skipped=False)

    def _verify(self, marker: dict[str, Any]) -> list[Problem]:
        """The committed files that differ from the marker's sha256 record ([] when ``storage.verify`` is off or the
        stage committed before checksums existed)."""
        if not self.ctx.cfg.storage.verify or "files" not in marker:
            return []
        return check_dir(self.out_dir, marker["files"])


def committed(out_dir: str) -> StageResult | None:
    """The result a stage committed into ``out_dir`` (its ``_SUCCESS.json``), None when it has not committed."""
    marker = fs.read_json_or_none(join(out_dir, SUCCESS))
    return None if marker is None else StageResult.from_marker(marker)


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in counts.items() if not isinstance(v, dict)
    )
