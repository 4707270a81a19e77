"""Filesystem access for local paths and pyarrow URIs, with atomic (temporary name → rename) writes."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


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
