"""One writer per stage output: an exclusive lock taken before a stage looks at its directory.

Local storage uses ``fcntl.flock`` on ``<out_dir>.lock`` (a sibling file, so the committed directory itself holds
only outputs). The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a local lock
is never stale; the file keeps the last holder's host, pid and start time, which a refused writer is told. Object
stores have no such lock: there the stage runs unlocked (logged at each run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from engine.errors import WriterLocked
from engine.io import fs

log = logging.getLogger(__name__)


def lock_path(out_dir: str) -> str:
    """The lock file of ``out_dir``: ``<out_dir>.lock`` beside it."""
    return out_dir.rstrip("/") + ".lock"


@contextlib.contextmanager
def writer_lock(out_dir: str, label: str) -> Iterator[None]:
    """Hold ``out_dir``'s writer lock for the ``with`` body; another holder makes this a :class:`WriterLocked`."""
    if not fs.is_local(out_dir):
        log.info("%s: %s is not on a local filesystem; running without a writer lock", label, out_dir)
        yield
        return
    path = fs.resolve(lock_path(out_dir))[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise WriterLocked(
                f"{label}: {out_dir} is being written by {_holder(fd)}; wait for that run to finish (or stop it). "
                f"The lock is released when its process ends; on a network filesystem that does not, delete {path}"
            )
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": dt.datetime.now(dt.UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _try_lock(fd: int, attempts: int = 10, wait_s: float = 0.05) -> bool:
    """Take the exclusive lock, retrying briefly: a status probe (:func:`is_held`) holds a shared lock for an
    instant, which must not refuse a writer."""
    for i in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < attempts:
                time.sleep(wait_s)
    return False


def is_held(out_dir: str) -> bool | None:
    """Whether a live process holds ``out_dir``'s writer lock right now; None where it cannot be known (object
    stores). Probes with a shared lock released at once, so a writer that starts in that instant waits for it (see
    :func:`writer_lock`'s retry), never fails."""
    if not fs.is_local(out_dir):
        return None
    path = fs.resolve(lock_path(out_dir))[1]
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
