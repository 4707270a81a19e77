"""Source adapter contract: SourceRow, keys, locators, the adapter registry and the shared row listing."""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.config import SPLITS, SourceConfig
from engine.errors import ConfigError, SourceFormatError
from engine.labels import LabelSpace, get_label_space
from engine.sources.pixel_csv import PIXEL_CSV_SCHEME, parse_pixel_csv_locator, read_pixel_row

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""File suffixes (lower-cased) listed as images by folder-based adapters: what Pillow decodes (a GIF or a multi-page
TIFF gives its first frame). Other files are skipped and counted in the log (:func:`iter_image_files`)."""

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "unlabelled": "unlabelled",
    "unlabeled": "unlabelled",
}
"""Lower-cased split names found in folder layouts and CSV columns → engine split."""

TAR_SCHEME = "tar://"
FS_BYTES_SCHEME = "fsbytes://"
"""Locator of a file whose name is not valid UTF-8 (parquet strings must be): ``fsbytes://`` + the percent-encoded
bytes of its absolute path (:func:`file_locator`)."""
_KEY_PART = re.compile(r"[A-Za-z0-9-]+")
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NOT_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceRow:
    """One sample of a source as listed on disk (nothing decoded yet)."""

    key: str
    """Stable across runs, unique in the source, only ``[A-Za-z0-9_-]``; starts with ``<source>_``."""
    orig_path: str
    """Path relative to the source root (or tar member name), for lineage."""
    locator: str
    """Absolute file path, ``tar://<abs tar path>#<offset>:<size>`` (byte range of a tar member),
    ``pixelcsv://<abs csv path>#<offset>:<size>`` (one FER2013 pixel-CSV record, decoded to a PNG when read), or
    ``fsbytes://<percent-encoded path bytes>`` (a file name that is not UTF-8; the listing writes it, see
    :func:`file_locator`)."""
    split: str
    """train | val | test | unlabelled."""
    label: int = -1
    """Index into the source's label space; -1 = no label (never guessed)."""
    group: str | None = None
    """Subject or video id."""
    frame: int | None = None
    """Frame number within ``group`` (Aff-Wild2: the 1-based number in the frame's file name)."""
    valence: float | None = None
    arousal: float | None = None
    box: tuple[int, int, int, int] | None = None
    reject: str | None = None
    """``<reason>: <detail>`` when the file must not be read (set by the listing's checks, e.g. ``outside_root``);
    ingest quarantines the row with that reason."""
    """(left, top, right, bottom) face crop in pixels, applied at decode time."""


# ---------------------------------------------------------------- keys and locators


MAX_KEY_CHARS = 95
"""Longest row key: shard members are ``<key>.json`` and ``<key>.<ext>`` in USTAR tars, whose member names hold at
most 100 bytes (keys are ASCII)."""


def make_key(source: str, *parts: str | int) -> str:
    """Deterministic row key ``<source>_<part>_<part>...``, at most :data:`MAX_KEY_CHARS` long.

    A part is kept verbatim when it matches ``[A-Za-z0-9-]+``. Otherwise every run of characters outside
    ``[A-Za-z0-9-]`` (underscores and dots included) becomes ``-``, and ``_<8 hex>`` (sha1 of the original
    parts joined by ``/``) is appended to the key. Keys are therefore unique whenever the adapter's parts
    are: clean keys split back into their parts unambiguously (``_`` only separates parts), and rewritten
    parts are told apart by the hash (two rewritten ids share a key only on a 32-bit sha1 prefix collision
    of ids that also sanitise identically). The source name is sanitised without a hash (it is constant). A key
    longer than :data:`MAX_KEY_CHARS` (a 255-byte file name, a deep path) is cut to its first 86 characters and the
    same ``_<8 hex>`` hash of the original parts is appended, so it stays unique; the full path stays in the
    manifest's ``orig_path``.

    Args:
        source: the source name (``SourceConfig.name``).
        parts: the native id of the sample, e.g. (folder, stem, suffix) or (video, frame).
    """
    texts = [str(p) for p in parts]
    if not texts:
        raise ValueError("make_key needs at least one part")
    clean = [
        t if _KEY_PART.fullmatch(t) else _NOT_KEY_CHARS.sub("-", t.replace("_", "-")).strip("-") or "x" for t in texts
    ]
    key = "_".join([_NOT_KEY_CHARS.sub("-", source) or "source", *clean])
    # surrogateescape: a file name that is not UTF-8 (os.fsdecode gives lone surrogates) hashes by its bytes
    digest = hashlib.sha1("/".join(texts).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    if clean != texts:
        key += "_" + digest
    if len(key) > MAX_KEY_CHARS:
        key = key[: MAX_KEY_CHARS - len(digest) - 1] + "_" + digest
    return key


def path_key(source: str, rel_path: str) -> str:
    """Key of a file from its path relative to the source root: parts = folders, stem, suffix.

    ``happy/img001.png`` → ``<source>_happy_img001_png``. Every listed file has an image suffix, so the
    suffix is always the last part and (folders, stem, suffix) is unique per path.
    """
    rel = rel_path.replace(os.sep, "/").strip("/")
    *folders, name = rel.split("/")
    stem, dot, suffix = name.rpartition(".")
    parts = [*folders, stem, suffix] if dot and stem else [*folders, name]
    return make_key(source, *parts)


def tar_locator(tar_path: str | os.PathLike[str], offset: int, size: int) -> str:
    """Locator of a tar member's data: ``tar://<abs tar path>#<offset>:<size>`` (bytes)."""
    return f"{TAR_SCHEME}{os.path.abspath(tar_path)}#{offset}:{size}"


def locator_size(locator: str) -> int:
    """Byte size a locator points at, without reading it (tar range size, pixel-CSV record size, or the file's size
    on disk).

    Raises:
        SourceFormatError: a malformed ``tar://`` or ``pixelcsv://`` locator.
        OSError: the plain file cannot be stat-ed.
    """
    if locator.startswith(TAR_SCHEME):
        return _parse_tar_locator(locator)[2]
    if locator.startswith(PIXEL_CSV_SCHEME):
        return parse_pixel_csv_locator(locator)[2]
    return os.stat(_plain_path(locator)).st_size


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: os.fsdecode of bytes that are not UTF-8
        return False
    return True


def file_locator(path: str) -> str:
    """``path`` itself, or for a name that is not valid UTF-8 a ``fsbytes://`` locator of its exact bytes."""
    if _is_utf8(path):
        return path
    return FS_BYTES_SCHEME + urllib.parse.quote_from_bytes(os.fsencode(path), safe="/")


def printable_path(path: str) -> str:
    """``path`` for lineage columns and messages: itself, or with the bytes that are not UTF-8 written ``\\xNN``."""
    return path if _is_utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def _plain_path(locator: str) -> str:
    """The file system path of a plain-file locator (a path, or ``fsbytes://``)."""
    if locator.startswith(FS_BYTES_SCHEME):
        return os.fsdecode(urllib.parse.unquote_to_bytes(locator[len(FS_BYTES_SCHEME) :]))
    return locator


def _parse_tar_locator(locator: str) -> tuple[str, int, int]:
    path, sep, rng = locator[len(TAR_SCHEME) :].rpartition("#")
    offset_s, colon, size_s = rng.partition(":")
    if not (sep and colon and path and offset_s.isdigit() and size_s.isdigit()):
        raise SourceFormatError(
            f"malformed tar locator {locator!r}; expected tar://<absolute tar path>#<offset>:<size>"
        )
    return path, int(offset_s), int(size_s)


class NotAFile(OSError):
    """A listed path is a FIFO, a device or a socket: opening it could block forever or never end."""


def read_bytes(locator: str) -> bytes:
    """The bytes a locator points at: a whole plain file, a tar member's byte range, or the PNG of a pixel-CSV record.

    Raises:
        SourceRecordError: a malformed pixel-CSV record (ingest quarantines the row as ``bad_record``).
        SourceFormatError: a malformed locator, a range that runs past the end of the tar, or a pixel-CSV range that
            is no longer one record.
        NotAFile: the path is not a regular file (checked with ``stat`` before opening it).
        OSError: the file cannot be read (missing, permissions).
    """
    if locator.startswith(PIXEL_CSV_SCHEME):
        return read_pixel_row(locator)
    if not locator.startswith(TAR_SCHEME):
        path = _plain_path(locator)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotAFile(f"{locator} is not a regular file (a FIFO, device or socket); it was not opened")
        with open(path, "rb") as fh:
            return fh.read()
    path, offset, size = _parse_tar_locator(locator)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise SourceFormatError(
            f"tar locator {locator!r} asks for {size} bytes at {offset} but {path} ends after {len(data)}; "
            "the tar changed or is truncated since listing: re-run the listing"
        )
    return data


def iter_image_files(root: Path, *, label: str = "") -> Iterator[Path]:
    """Image files under ``root`` (recursive), in sorted path order; hidden files and folders are skipped, and the
    other files, whose suffix is not in :data:`IMAGE_SUFFIXES`, are counted by suffix in one log line at the end."""
    skipped: collections.Counter[str] = collections.Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                yield Path(dirpath) / name
            else:
                skipped[suffix or "(no suffix)"] += 1
    if skipped:
        log.info(
            "%s%s: %d file(s) skipped, not an image by suffix: %s",
            f"{label} " if label else "",
            printable_path(str(root)),
            sum(skipped.values()),
            ", ".join(f"{s} {n}" for s, n in sorted(skipped.items())),
        )


def parse_split(value: str, *, where: str) -> str:
    """Engine split of a split name (``Training``, ``valid``, ``unlabeled`` ...).

    Raises:
        SourceFormatError: an unknown split name.
    """
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise SourceFormatError(f"{where}: unknown split {value!r}; use one of {', '.join(sorted(SPLIT_ALIASES))}")
    return split


class Occurrences:
    """Counts repeats of a native id so that repeated ids get distinct keys (``<id>``, ``<id>_2`` ...)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def suffix(self, native_id: str) -> tuple[str, ...]:
        """() the first time ``native_id`` is seen, then ("2",), ("3",) ... (extra key parts)."""
        n = self._seen.get(native_id, 0) + 1
        self._seen[native_id] = n
        return () if n == 1 else (str(n),)


# ---------------------------------------------------------------- adapters


class SourceAdapter:
    """Lists the rows of one source in its original on-disk format.

    Subclasses implement :meth:`list_rows` as a generator in a deterministic order and never hold the
    whole listing in memory. Consumers call :meth:`rows` (or :func:`list_source_rows`), which applies
    ``cfg.limit`` and checks every row.
    """

    format_name: str = ""
    download_hint: str = ""
    """What to do when the dataset is not at ``path``: where to get it and what ``sources.{name}.path`` points at
    (``{name}`` is replaced by the source's name); one line, ending the error of :meth:`require`."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.name: str = cfg.name or cfg.format
        """Source name used as key prefix (``cfg.name``, or the format name when the config has none)."""
        self.space: LabelSpace = get_label_space(cfg.label_space)
        self.root = Path(cfg.path).expanduser().absolute()

    def list_rows(self) -> Iterator[SourceRow]:
        """Every row of the source, deterministic order, no limit applied."""
        raise NotImplementedError

    def rows(self) -> Iterator[SourceRow]:
        """:meth:`list_rows` with ``cfg.limit`` applied per split and each row validated."""
        return limit_rows(_checked(self.list_rows(), self), self.cfg.limit)

    # helpers shared by adapters

    def require(self, path: Path, what: str, *, hint: str = "") -> Path:
        """``path`` if it exists, else a one-line SourceFormatError naming the format, ``what`` and ``path``.

        Args:
            path: the file or folder the layout needs.
            what: its name in the message.
            hint: what to do (where to download the dataset, what to point ``sources.<name>.path`` at); the default
                points at the layout in docs/reference/formats.md.
        """
        if not path.exists():
            raise SourceFormatError(
                f"source {self.name!r} ({self.cfg.format}): {what} not found at {path}; "
                + (
                    hint
                    or self.download_hint.format(name=self.name)
                    or "check sources.<name>.path and the layout in docs/reference/formats.md"
                )
            )
        return path

    def outside_root(self, row: SourceRow) -> str | None:
        """``outside_root: …`` when the plain file ``row`` points at resolves (symlinks followed) outside the source's
        folder and ``follow_outside`` is off, else None."""
        if self.cfg.follow_outside or "://" in row.locator.replace(FS_BYTES_SCHEME, "", 1):
            return None
        base = os.path.realpath(self.root if self.root.is_dir() else self.root.parent)
        target = os.path.realpath(_plain_path(row.locator))
        if target == base or target.startswith(base.rstrip(os.sep) + os.sep):
            return None
        return (
            f"outside_root: {row.orig_path} resolves to {printable_path(target)}, outside {printable_path(base)}; "
            f"set sources.{self.name}.follow_outside=true to ingest it"
        )

    def rel(self, path: Path) -> str:
        """``path`` relative to the source root, with ``/`` separators."""
        return path.relative_to(self.root).as_posix()


_ADAPTERS: dict[str, type[SourceAdapter]] = {}


def register_adapter(name: str) -> Callable[[type[SourceAdapter]], type[SourceAdapter]]:
    """Class decorator registering an adapter under a ``SourceConfig.format`` name."""

    def deco(cls: type[SourceAdapter]) -> type[SourceAdapter]:
        if name in _ADAPTERS and _ADAPTERS[name] is not cls:
            raise ValueError(f"source format {name!r} registered twice ({_ADAPTERS[name].__name__}, {cls.__name__})")
        cls.format_name = name
        _ADAPTERS[name] = cls
        return cls

    return deco


def adapter_names() -> tuple[str, ...]:
    """Registered format names, sorted."""
    return tuple(sorted(_ADAPTERS))


def adapter_docs(name: str) -> tuple[str, str, str]:
    """``(module docstring, class docstring, download hint)`` of the adapter registered as ``name``: what the
    format's documentation (``fer-engine list formats``, docs/reference/formats.md) says of it."""
    import sys

    cls = _ADAPTERS[name]
    return sys.modules[cls.__module__].__doc__ or "", cls.__doc__ or "", cls.download_hint


def get_adapter(cfg: SourceConfig) -> SourceAdapter:
    """The adapter for ``cfg.format``, built on ``cfg``.

    Raises:
        ConfigError: an unknown format, with the closest valid name.
        UnknownLabelError: an unknown ``cfg.label_space``.
    """
    cls = _ADAPTERS.get(cfg.format)
    if cls is None:
        close = difflib.get_close_matches(cfg.format, list(_ADAPTERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"sources.{cfg.name or '?'}.format: unknown format {cfg.format!r}{hint}; "
            f"valid: {', '.join(adapter_names())}"
        )
    return cls(cfg)


def list_source_rows(cfg: SourceConfig) -> Iterator[SourceRow]:
    """Rows of the source ``cfg`` describes: adapter listing, ``cfg.limit`` per split, row checks."""
    return get_adapter(cfg).rows()


def limit_rows(rows: Iterable[SourceRow], limit: int | None) -> Iterator[SourceRow]:
    """At most ``limit`` rows per split, in listing order (None keeps all); stops once every split is full."""
    if limit is None:
        yield from rows
        return
    counts = dict.fromkeys(SPLITS, 0)
    for row in rows:
        if counts[row.split] < limit:
            counts[row.split] += 1
            yield row
            if all(c >= limit for c in counts.values()):
                return


def _checked(rows: Iterable[SourceRow], adapter: SourceAdapter) -> Iterator[SourceRow]:
    """Validate each row (key charset and prefix, split, label range, box) and reject duplicate keys.

    Keys are remembered as 8-byte digests (a few tens of bytes per row), not as rows.
    """
    prefix = make_key(adapter.name, "x")[:-1]
    n_classes = len(adapter.space)
    seen: set[bytes] = set()
    for row in rows:
        if "://" not in row.locator and not (_is_utf8(row.locator) and _is_utf8(row.orig_path)):
            row = dataclasses.replace(row, locator=file_locator(row.locator), orig_path=printable_path(row.orig_path))
        reject = adapter.outside_root(row)
        if reject:
            row = dataclasses.replace(row, reject=reject)
        problem = ""
        if not (_KEY.fullmatch(row.key) and row.key.startswith(prefix)):
            problem = f"key must match [A-Za-z0-9_-]+ and start with {prefix!r}"
        elif row.split not in SPLITS:
            problem = f"split must be one of {', '.join(SPLITS)}"
        elif not -1 <= row.label < n_classes:
            problem = f"label must be -1 or an index < {n_classes} of label space {adapter.space.name!r}"
        elif row.box is not None and (len(row.box) != 4 or not all(isinstance(v, int) for v in row.box)):
            problem = "box must be 4 ints (left, top, right, bottom)"
        if problem:
            raise SourceFormatError(f"source {adapter.name!r}: bad row {row!r}: {problem} (adapter bug)")
        digest = hashlib.blake2b(row.key.encode(), digest_size=8).digest()
        if digest in seen:
            raise SourceFormatError(
                f"source {adapter.name!r}: key {row.key!r} listed twice (from {row.orig_path!r}); "
                "the listing repeats a sample: fix the annotation file or report an adapter bug"
            )
        seen.add(digest)
        yield row
