"""Filesystem access for local paths and pyarrow URIs, with atomic (temporary name → rename) writes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import StorageError


@lru_cache(maxsize=32)
def _resolve_root(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, str(path)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or any pyarrow URI (``s3://``, ``gs://``, ``file://``)."""
    if path.startswith("file://"):  # no host part to build a filesystem from
        return pafs.LocalFileSystem(), os.path.abspath(path[len("file://") :])
    if "://" in path:
        scheme, _, rest = path.partition("://")
        fs, _ = _resolve_root(f"{scheme}://{rest.split('/', 1)[0]}")
        return fs, pafs.FileSystem.from_uri(path)[1]
    return _resolve_root("/")[0], os.path.abspath(path)


def is_local(path: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return isinstance(resolve(path)[0], pafs.LocalFileSystem)


def exists(path: str) -> bool:
    """Whether a file or directory exists at ``path``."""
    fs, p = resolve(path)
    return bool(fs.get_file_info(p).type != pafs.FileType.NotFound)


def makedirs(path: str) -> None:
    """Create a directory and its parents (no-op where directories are implicit, e.g. S3)."""
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})
"""``OSError`` numbers that mean the storage, not the engine, is at fault (full, read-only, not allowed, a file in
the way): jobs report them in one line (engine.cli) instead of a traceback."""

MIN_FREE_BYTES = 16 << 20
"""A local storage root with less free space than this is reported full before any stage starts."""

_ANOTHER_ROOT = "or choose another folder with --set storage.root=PATH"


def check_storage_root(root: str) -> None:
    """Create a local storage root if missing and prove that it takes a file, before any stage (or Ray) starts.

    Object-store roots (``s3://`` ...) are left to their first write: creating nothing there is no proof.

    Raises:
        StorageError: one line naming the root, what is wrong (cannot be created, not writable, full) and what to do.
    """
    if not is_local(root):
        return
    path = resolve(root)[1]
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        where = f" at {exc.filename}" if exc.filename and exc.filename != path else ""
        raise StorageError(
            f"storage root {root} cannot be created ({exc.strerror}{where}); create it yourself, {_ANOTHER_ROOT}"
        ) from None
    probe = os.path.join(path, f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"storage root {root} is full ({exc.strerror}); free space on it, {_ANOTHER_ROOT}"
            ) from None
        raise StorageError(
            f"storage root {root} is not writable ({exc.strerror}); make it writable (a read-only mount? its "
            f"permissions?), {_ANOTHER_ROOT}"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # never created (read-only), or already gone
            os.remove(probe)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise StorageError(
            f"storage root {root} is full ({free / 2**20:.1f} MiB free on its filesystem, under "
            f"{MIN_FREE_BYTES >> 20} MiB); free space on it, {_ANOTHER_ROOT}"
        )


def storage_oserror(exc: BaseException) -> OSError | None:
    """The storage ``OSError`` (:data:`STORAGE_ERRNOS`) behind ``exc``, following causes and Ray's wrapped task
    errors; None when the failure is something else."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in STORAGE_ERRNOS:
            return cur
        cause = getattr(cur, "cause", None)  # ray.exceptions.RayTaskError keeps the task's exception here
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def listdir(path: str, suffix: str = "") -> list[str]:
    """Sorted full paths of the files directly under ``path`` ending with ``suffix``; [] if it does not exist."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    base = path.rstrip("/")
    return sorted(
        f"{base}/{i.base_name}" for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
    )


def subdirs(path: str) -> list[str]:
    """Sorted names of the directories directly under ``path``; [] if it does not exist."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def remove(path: str) -> None:
    """Delete a file or a directory tree; no error when it is absent."""
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary sibling renamed into place on success.

    A reader never sees a half-written file; if the body raises, no final file appears and the temporary is removed.
    """
    fs, p = resolve(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(tmp) as raw:
            if "b" in mode:
                yield raw
            else:
                import io

                with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as text:
                    yield text
        fs.move(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    """All bytes of the file at ``path``."""
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return bytes(f.read())


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (byte-stable for equal objects)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def read_json(path: str) -> Any:
    """Parsed JSON of the file at ``path``."""
    return json.loads(read_bytes(path))


def read_json_or_none(path: str) -> Any:
    """Parsed JSON, or None when the file does not exist."""
    return read_json(path) if exists(path) else None


PARQUET_WRITE: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
"""How the engine writes every parquet file: zstd, and a CRC per page that :func:`read_parquet` checks, so a flipped
bit inside a data page is an error when read, not a changed value (the stage's sha256 covers the whole file)."""


def write_parquet(path: str, table: pa.Table) -> None:
    """Atomically write a parquet file (deterministic bytes for equal tables)."""
    with atomic_write(path) as f:
        pq.write_table(table, f, **PARQUET_WRITE)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one parquet file (or a directory of them), checking the page CRCs its writer recorded."""
    fs, p = resolve(path)
    return pq.read_table(p, columns=columns, filesystem=fs, page_checksum_verification=True)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
