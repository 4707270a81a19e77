"""Helpers for tests that run jobs/ drivers and Ray as subprocesses: tiny campaign overrides, free ports, and
finding and ending only our own processes.

``ray stop --force`` is not used: it kills every Ray process on the machine (it matches process names), including
other sessions' clusters. These helpers end processes by pid, chosen by ancestry or by a marker string (a unique
temp dir) in their command line. Linux only (they read ``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Proc = tuple[int, int]
"""A process identity: (pid, start time in clock ticks since boot). Pids wrap quickly on a busy machine (pid_max
may be 32768), so a bare pid seen earlier can belong to someone else's process now; the start time tells them apart."""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, start time) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _procs() -> dict[int, tuple[str, int, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            out[int(d)] = st
    return out


def descendants(pid: int) -> set[Proc]:
    """Every live descendant of ``pid``."""
    table = _procs()
    children: dict[int, list[int]] = {}
    for p, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out: set[Proc] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if (c, table[c][2]) not in out:
                out.add((c, table[c][2]))
                todo.append(c)
    return out


def marked(marker: str) -> set[Proc]:
    """Live processes whose command line holds ``marker`` (e.g. a unique temp dir), and their descendants."""
    me = os.getpid()
    found: set[Proc] = set()
    for p, (_, _, start) in _procs().items():
        if p != me and marker in _cmdline(p):
            found.add((p, start))
            found |= descendants(p)
    return found


def with_env(marker: str) -> set[Proc]:
    """Live processes (of this user) whose environment holds the entry ``marker`` (``NAME=value``): a job run with
    a unique marker passes it to every process it starts, Ray's node and workers included, even those that outlive
    their parent reparented to init, which ancestry no longer finds."""
    me = os.getpid()
    found: set[Proc] = set()
    for p, (state, _, start) in _procs().items():
        if p == me or state in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if marker.encode() in env:
            found.add((p, start))
    return found


def leftovers(marker: str, timeout: float = 1.0) -> list[str]:
    """The command lines of processes that carry ``marker`` (:func:`with_env`) still alive ``timeout`` s from now:
    what a finished job left behind."""
    return sorted(_cmdline(p)[:120] for p, _ in wait_gone(with_env(marker), timeout))


def alive(procs: Iterable[Proc]) -> set[Proc]:
    """The processes still running: same pid and start time, not a zombie."""
    out = set()
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] not in ("Z", "X"):
            out.add((pid, start))
    return out


def wait_gone(procs: Iterable[Proc], timeout: float) -> set[Proc]:
    """Wait up to ``timeout`` s for ``procs`` to exit; returns those still alive."""
    procs = set(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = alive(procs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def kill_all(procs: Iterable[Proc], *, grace: float = 5.0) -> None:
    """SIGTERM each live process, wait ``grace`` s, then SIGKILL the survivors (identity re-checked each time)."""
    procs = alive(procs)
    for p in procs:
        _signal(p, signal.SIGTERM)
    for p in wait_gone(procs, grace):
        _signal(p, signal.SIGKILL)
    wait_gone(procs, grace)


def _signal(proc: Proc, sig: int) -> None:
    if alive([proc]):  # never signal a recycled pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc[0], sig)


def wait_healthy(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; an AssertionError with the end of ``log`` when ``proc`` dies first or
    ``timeout`` seconds pass (a server a test started: MLflow, Label Studio)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered: " + log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)


def tiny_sets(root: Path | str, fer2013_dir: Path, epochs: int) -> list[str]:
    """Overrides of conf/demo.yaml for a tiny campaign: 150 images per split, tiny_cnn, ``epochs`` epochs.

    The source part (path, limit, shard size) is the same for every tiny campaign of the suite, so each can start
    from a copy of the shared campaign's ingested ``sources/`` (tests/integration/conftest.py) and skip ingest.
    """
    return [
        f"storage.root={root}",
        f"sources.fer2013.path={Path(fer2013_dir).resolve()}",
        "sources.fer2013.limit=150",
        "ingest.samples_per_shard=100",
        "campaign.max_labelled=null",
        "campaign.max_unlabelled=null",
        "campaign.max_eval=null",
        "campaign.labelled_fraction=0.3",
        "campaign.stop_when_no_gain=false",
        "model.name=tiny_cnn",
        f"train.epochs={epochs}",
        f"student.train.epochs={epochs}",  # conf/demo.yaml gives round 1 its own budget
        "train.batch_size=32",
        "train.ema_decay=0",  # a few tiny epochs: the raw weights (the demo's EMA is tested in test_train)
        "threshold.policy=fixed",
        "threshold.tau=0.2",
        "select.cap_multiple_of_labelled=null",
    ]


def tiny_overrides(root: Path, fer2013_dir: Path, epochs: int) -> list[str]:
    """:func:`tiny_sets` as ``--set`` command-line arguments (absolute paths)."""
    return [a for s in tiny_sets(root, fer2013_dir, epochs) for a in ("--set", s)]
