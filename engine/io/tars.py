"""WebDataset shard tars: the one writer (deterministic USTAR members) and the one reader of image members."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

from engine.errors import EngineError
from engine.io import fs

IMAGE_EXTS = ("png", "jpg", "jpeg")
"""Extensions of the image member of a sample (``<key>.<ext>``)."""


_REBUILD = "re-ingest its source with --set storage.on_existing=overwrite (jobs/ingest.py)"
"""What rebuilds a damaged shard (said by every error about one)."""


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A USTAR tar of ``(name, data)`` members in the given order, byte-identical for the same input: mtime 0,
    mode 0644, no owner names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_members(tar_path: str, wanted: set[str]) -> dict[str, tuple[str, bytes]]:
    """``key → (extension, encoded bytes)`` of the image members of one shard tar whose key is in ``wanted``.

    Raises:
        EngineError: the tar cannot be read, or lacks a wanted key (a truncated shard reads as a shorter tar):
            named with the shard and what rebuilds it, instead of a KeyError deep inside a Ray task.
    """
    out: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(fs.read_bytes(tar_path)), mode="r") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key in wanted and ext in IMAGE_EXTS:
                    f = tar.extractfile(m)
                    if f is not None:
                        out[key] = (ext, f.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise EngineError(f"shard {tar_path} cannot be read ({type(exc).__name__}: {exc}); {_REBUILD}") from None
    if len(out) < len(wanted):
        missing = sorted(wanted - set(out))
        raise EngineError(
            f"shard {tar_path} lacks {len(missing)} of the {len(wanted)} images its manifest lists (e.g. "
            f"{missing[0]}): it is truncated or damaged; {_REBUILD}"
        )
    return out


def read_images(tar_path: str, wanted: set[str]) -> dict[str, bytes]:
    """``key → encoded bytes`` of the wanted image members of one shard tar."""
    return {k: data for k, (_, data) in read_members(tar_path, wanted).items()}
