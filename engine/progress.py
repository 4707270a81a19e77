"""One progress display per stage: a tqdm bar on a terminal (done / total, rate, ETA, redrawn in place), else a plain
log line at most every :data:`PLAIN_EVERY_S` seconds and one at the end. Ray Data's own bars stay off unless the job
runs with ``--verbose`` (engine.runtime), so a stage shows one bar, in the engine's words."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("engine.progress")

PLAIN_EVERY_S = 15.0
"""Seconds between two plain progress lines when stderr is not a terminal (CI logs, ``ray job submit`` output)."""


def track(
    items: Iterable[T],
    *,
    desc: str,
    total: int | None,
    unit: str = "rows",
    count: Callable[[T], int] | None = None,
    every_s: float = PLAIN_EVERY_S,
) -> Iterator[T]:
    """Yield ``items`` unchanged while showing how far the stage ``desc`` is.

    Args:
        desc: the stage, as its logs name it (``score r001``).
        total: how many ``unit`` the stage will process, or None when unknown (no ETA then).
        unit: what is counted (``rows``, ``shards``, ``parts``).
        count: how many units one item is (e.g. the rows of a batch); 1 per item when None.
        every_s: at most one plain line per this many seconds (non-terminal only).
    """
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True, leave=True) as bar:
            for item in items:
                yield item
                bar.update(count(item) if count else 1)
        return
    t0 = last = time.monotonic()
    done = shown = 0
    for item in items:
        yield item
        done += count(item) if count else 1
        now = time.monotonic()
        if now - last >= every_s:
            last, shown = now, done
            log.info("%s", _line(desc, done, total, unit, now - t0))
    now = time.monotonic()
    if done != shown and now - t0 >= every_s:  # the end, unless just shown; a short stage needs no line at all
        log.info("%s", _line(desc, done, total, unit, now - t0))


def _line(desc: str, done: int, total: int | None, unit: str, seconds: float) -> str:
    """``score r001: 3,000/10,000 rows (30%), 250 rows/s, ETA 28 s``."""
    rate = done / max(seconds, 1e-9)
    if total:
        eta = (total - done) / rate if rate > 0 else float("inf")
        return (
            f"{desc}: {done:,}/{total:,} {unit} ({done / total:.0%}), {rate:,.1f} {unit}/s, "
            f"ETA {_duration(eta) if done < total else '0 s'}"
        )
    return f"{desc}: {done:,} {unit}, {rate:,.1f} {unit}/s"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"
