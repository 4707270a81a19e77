"""sha256 of every file a stage commits, recorded in its ``_SUCCESS.json`` (``files``) and checked before the
committed outputs are used again (:func:`verify_dir`) or by ``fer-engine verify`` (:func:`verify_root`).

A file is hashed once per process while its size and modification time are unchanged (local storage; on object
stores once per process). Bookkeeping files are not part of a stage's outputs: ``_SUCCESS.json`` itself,
``_RUNNING.json`` and the work folder ``_work/``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from engine.io import fs
from engine.layout import join

log = logging.getLogger(__name__)

SKIP = ("_SUCCESS.json", "_RUNNING.json")
_CHUNK = 1 << 20
_verified: set[tuple[str, int, int, str]] = set()
"""(path, size, mtime_ns, sha256) of files this process has checked."""


def _files(out_dir: str) -> Iterator[tuple[str, pafs.FileInfo]]:
    """``(path relative to out_dir, info)`` of every output file under ``out_dir``, sorted."""
    filesystem, base = fs.resolve(out_dir)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    root = base.rstrip("/") + "/"
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        rel = info.path[len(root) :] if info.path.startswith(root) else info.base_name
        if rel in SKIP or rel.startswith("_work/"):
            continue
        yield rel, info


def sha256_file(path: str) -> str:
    """Hex sha256 of the file at ``path`` (local path or URI), read in 1 MiB chunks."""
    filesystem, p = fs.resolve(path)
    h = hashlib.sha256()
    with filesystem.open_input_stream(p) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_dir(out_dir: str) -> dict[str, list[Any]]:
    """``{relative path: [bytes, sha256]}`` of every output file under ``out_dir`` (what ``_SUCCESS.json`` keeps)."""
    out: dict[str, list[Any]] = {}
    for rel, info in _files(out_dir):
        digest = sha256_file(join(out_dir, rel))
        out[rel] = [int(info.size), digest]
        _remember(info, digest)
    return out


@dataclass(frozen=True)
class Problem:
    """One committed file that is not what its stage wrote."""

    path: str
    problem: str
    """``missing``, ``size <n> (committed <m>)`` or ``sha256 changed``."""


def check_dir(out_dir: str, files: dict[str, list[Any]]) -> list[Problem]:
    """The files of ``out_dir`` that differ from ``files`` (a ``_SUCCESS.json``'s record), each hashed at most once
    per process while unchanged."""
    present = dict(_files(out_dir))
    problems = []
    for rel, (size, digest) in sorted(files.items()):
        path = join(out_dir, rel)
        info = present.get(rel)
        if info is None:
            problems.append(Problem(path, "missing"))
        elif info.size != size:
            problems.append(Problem(path, f"size {info.size:,} bytes (committed {size:,})"))
        elif _key(info, digest) not in _verified:
            if sha256_file(path) != digest:
                problems.append(Problem(path, "sha256 changed (same size: bytes flipped in place)"))
            else:
                _remember(info, digest)
    return problems


@dataclass(frozen=True)
class RootCheck:
    """What :func:`verify_root` found."""

    stages: int
    unchecked: int
    """Stages committed before checksums existed (no ``files`` in their marker): counted, not checked."""
    files: int
    bad: dict[str, tuple[str, list[Problem]]]
    """Stage directory → (stage name, problems), only for stages with problems."""


def verify_root(root: str) -> RootCheck:
    """Check every committed stage under ``root`` (every ``_SUCCESS.json``) against its sha256 record."""
    filesystem, base = fs.resolve(root)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    markers = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name == SKIP[0])
    stages = unchecked = files = 0
    bad: dict[str, tuple[str, list[Problem]]] = {}
    prefix = root.rstrip("/")
    for marker_path in markers:
        out_dir = prefix + marker_path[len(base.rstrip("/")) :].rsplit("/", 1)[0]
        marker = fs.read_json(join(out_dir, SKIP[0]))
        stages += 1
        recorded = marker.get("files")
        if recorded is None:
            unchecked += 1
            continue
        files += len(recorded)
        problems = check_dir(out_dir, recorded)
        if problems:
            bad[out_dir] = (str(marker.get("stage", "?")), problems)
    return RootCheck(stages, unchecked, files, bad)


def _key(info: pafs.FileInfo, digest: str) -> tuple[str, int, int, str]:
    mtime = info.mtime_ns if info.mtime_ns is not None else -1
    return (info.path, int(info.size), int(mtime), digest)


def _remember(info: pafs.FileInfo, digest: str) -> None:
    _verified.add(_key(info, digest))
