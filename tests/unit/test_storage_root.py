"""Storage-root problems (cannot be created, not writable, full) are one line naming the root and what to do, found
before any stage starts; a storage OSError in the middle of a job is one line too, not a traceback.

Read-only and full filesystems are real: a tmpfs mounted for the test (needs root, as CI runs; elsewhere the test
skips with that reason).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import cli
from engine.errors import StorageError
from engine.io import fs


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(mount: Path) -> None:
    """Write until the filesystem says it is full."""
    with contextlib.suppress(OSError), open(mount / "filler", "wb") as f:  # closing flushes: it fails too
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def test_a_new_root_is_created_and_no_probe_is_left(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "runs"
    fs.check_storage_root(str(root))
    assert root.is_dir() and list(root.iterdir()) == []


def test_a_root_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "runs"
    with pytest.raises(StorageError) as info:
        fs.check_storage_root(str(root))
    assert str(info.value) == (
        f"storage root {root} cannot be created (Not a directory); create it yourself, or choose another folder with "
        "--set storage.root=PATH"
    )


def test_a_read_only_filesystem_root_is_refused(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=4m") as mount:
        with pytest.raises(StorageError) as info:
            fs.check_storage_root(str(mount / "runs"))
        assert str(info.value).startswith(f"storage root {mount / 'runs'} cannot be created (Read-only file system)")
        with pytest.raises(StorageError) as info:
            fs.check_storage_root(str(mount))  # exists, but takes no file
        assert str(info.value) == (
            f"storage root {mount} is not writable (Read-only file system); make it writable (a read-only mount? its "
            "permissions?), or choose another folder with --set storage.root=PATH"
        )


def test_a_full_filesystem_root_is_refused(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", "size=1m") as mount:
        with pytest.raises(StorageError) as info:  # 1 MiB free: under MIN_FREE_BYTES
            fs.check_storage_root(str(mount / "runs"))
        assert str(info.value).startswith(f"storage root {mount / 'runs'} is full (1.0 MiB free on its filesystem")
        _fill(mount)
        with pytest.raises(StorageError) as info:  # not a byte left: the probe file itself fails
            fs.check_storage_root(str(mount))
        assert str(info.value) == (
            f"storage root {mount} is full (No space left on device); free space on it, or choose another folder "
            "with --set storage.root=PATH"
        )
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "runs"]  # the probe is gone


def test_a_full_disk_in_the_middle_of_a_job_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _tmpfs(tmp_path / "full", "size=64k") as mount:
        _fill(mount)

        def job(_: argparse.Namespace) -> None:
            try:
                (mount / "part-000000.parquet").write_bytes(b"x" * 8192)
            except OSError as exc:  # wrapped, as Ray wraps a task's error: the cause is still found
                raise RuntimeError("task failed") from exc

        p = argparse.ArgumentParser()
        p.set_defaults(_run=job)
        with pytest.raises(SystemExit) as code:
            cli._main(p, [])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: No space left on device (while writing); free space or fix the permissions of the storage root (or "
        "choose another storage.root), then run the same command again: committed stages are kept\n"
    )


def test_storage_oserror_finds_only_storage_errors() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x")
    try:
        try:
            raise full
        except OSError as exc:
            raise ValueError("wrapped") from exc
    except ValueError as outer:
        assert fs.storage_oserror(outer) is full
    assert fs.storage_oserror(OSError(errno.ECONNREFUSED, "refused")) is None
    assert fs.storage_oserror(KeyError("k")) is None


@pytest.mark.parametrize("job", ["ingest", "campaign", "evaluate"])
def test_jobs_refuse_a_root_that_cannot_be_created_in_one_line_before_ray(tmp_path: Path, job: str) -> None:
    import sys

    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "runs"
    extra = ["--checkpoint", str(tmp_path / "none.pt"), "--source", "fer2013"] if job == "evaluate" else []
    done = subprocess.run(
        [sys.executable, f"jobs/{job}.py", "--config", "conf/demo.yaml", "--set", f"storage.root={root}", *extra],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},  # nothing listens there: joining Ray would hang
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"error: storage root {root} cannot be created (Not a directory); create it yourself, or choose another "
        "folder with --set storage.root=PATH\n"
    )
