"""The stage contract, written once: fingerprint, skip, mismatch policy, run, ``_SUCCESS.json`` last."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine import __version__
from engine.config import flatten
from engine.errors import FingerprintMismatch
from engine.fingerprint import fingerprint, short
from engine.io import fs
from engine.layout import SUCCESS, join

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


@dataclass
class RunOutput:
    """What ``Stage.run`` returns; ``execute`` commits it into ``_SUCCESS.json``."""

    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One stage of the pipeline with an output directory it alone writes.

    Subclasses declare ``name`` and ``VERSION`` (bump by hand when the meaning of the outputs changes), return the
    config subset and upstream digests they depend on from ``fingerprint_inputs`` and do the work in ``run``, which
    writes every file atomically and never writes ``_SUCCESS.json``.
    """

    name: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def __init__(self, out_dir: str, *, on_existing: str = "error", label: str = "") -> None:
        self.out_dir = out_dir
        self.on_existing = on_existing
        self.label = label or self.name

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
        """Skip if committed with this fingerprint, else (re)run and commit; see DESIGN.md "The stage contract"."""
        fp = self.fingerprint()
        inputs = self.fingerprint_inputs()
        marker = fs.read_json_or_none(self.success_path)
        if marker is not None:
            if marker.get("fingerprint") == fp:
                log.info("%s: skipped (fingerprint %s)", self.label, short(fp))
                return StageResult.from_marker(marker)
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
        fs.write_json(join(self.out_dir, RUNNING), {"fingerprint": fp})
        log.info("%s: running (fingerprint %s)", self.label, short(fp))
        t0 = time.perf_counter()
        out = self.run()
        seconds = round(time.perf_counter() - t0, 3)
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
            },
        )
        fs.remove(join(self.out_dir, RUNNING))
        log.info("%s: committed %s in %.1f s", self.label, _fmt_counts(out.counts), seconds)
        return StageResult(self.name, fp, out.counts, out.extra, seconds, skipped=False)


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in counts.items() if not isinstance(v, dict)
    )
