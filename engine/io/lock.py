"""One writer per stage output: an exclusive lock taken before a stage looks at its directory.

Local storage uses ``fcntl.flock`` on ``<out_dir>.lock`` (a sibling file, so the committed directory itself holds
only outputs). The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a local lock
is never stale; the file keeps the last holder's host, pid and start time, which a refused writer is told.

Object stores have no lock call, so there the writer holds a *lease*: ``<out_dir>.lease``, an object naming its
owner (a random token, host, pid, start time) and the time of its last heartbeat, renewed by a thread every third of
its time-to-live and deleted on exit. Another writer is refused while the heartbeat is fresh and takes the lease over
(with a warning) once it is older than the TTL: the holder died. A writer reads the lease back after a short settle
time and is refused if another token won the race; object stores without conditional writes cannot do better than
this last-writer-wins check, which narrows the window to two writers starting within the settle time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

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
        with lease_lock(out_dir, label):
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


@contextlib.contextmanager
def waiting_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the local file ``<path>.lock`` for the ``with`` body, waiting for another
    holder to finish instead of refusing (short critical sections that any number of processes may need in turn,
    e.g. creating and migrating a sqlite store)."""
    lock = lock_path(path)
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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


LEASE_TTL_S = 60.0
"""How long a lease outlives its holder's last heartbeat before another writer may take it over."""


def lease_path(out_dir: str) -> str:
    """The lease object of ``out_dir`` on an object store: ``<out_dir>.lease`` beside it."""
    return out_dir.rstrip("/") + ".lease"


@contextlib.contextmanager
def lease_lock(out_dir: str, label: str, *, ttl_s: float = LEASE_TTL_S, settle_s: float = 1.0) -> Iterator[None]:
    """Hold ``out_dir``'s lease (any pyarrow filesystem) for the ``with`` body; a live holder makes this a
    :class:`WriterLocked` naming it. See the module docstring for the protocol and its limit."""
    path = lease_path(out_dir)
    me = {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": dt.datetime.now(dt.UTC).isoformat(),
        "ttl_s": ttl_s,
    }
    held = _read_lease(path)
    if held is not None:
        age = time.time() - float(held.get("heartbeat", 0.0))
        if age < float(held.get("ttl_s", ttl_s)):
            raise WriterLocked(_lease_refusal(label, out_dir, held, age, path))
        log.warning("%s: taking over %s: its holder's last heartbeat was %.0f s ago (%s)", label, path, age, held)
    _write_lease(path, me)
    time.sleep(settle_s)
    won = _read_lease(path)
    if won is None or won.get("token") != me["token"]:
        raise WriterLocked(_lease_refusal(label, out_dir, won or {}, 0.0, path))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl_s / 3):
            cur = _read_lease(path)
            if cur is None or cur.get("token") != me["token"]:
                log.error("%s: lost the lease %s to %s; the other writer may overwrite this output", label, path, cur)
                return
            _write_lease(path, me)

    heart = threading.Thread(target=beat, name=f"lease {label}", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()
        cur = _read_lease(path)
        if cur is not None and cur.get("token") == me["token"]:
            fs.remove(path)


def _read_lease(path: str) -> dict[str, Any] | None:
    if not fs.exists(path):
        return None
    try:
        return dict(json.loads(fs.read_bytes(path)))
    except FileNotFoundError:  # deleted by its holder since
        return None
    except ValueError:  # a torn or foreign object: treated as a dead holder's
        return {"heartbeat": 0.0}


def _write_lease(path: str, me: dict[str, Any]) -> None:
    fs.write_bytes(path, json.dumps({**me, "heartbeat": time.time()}).encode())


def _lease_refusal(label: str, out_dir: str, held: dict[str, Any], age: float, path: str) -> str:
    who = f"pid {held.get('pid', '?')} on {held.get('host', '?')} (since {held.get('since', '?')})"
    return (
        f"{label}: {out_dir} is being written by {who}, last heartbeat {age:.0f} s ago; wait for that run to finish. "
        f"If that process is gone, the lease expires {held.get('ttl_s', LEASE_TTL_S):.0f} s after its last "
        f"heartbeat, or delete {path}"
    )


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
