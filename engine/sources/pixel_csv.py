"""FER2013 pixel-CSV records (``fer2013.csv``): the locator of one record's byte range, and its decoding to a PNG."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from engine.errors import SourceFormatError, SourceRecordError

PIXEL_CSV_SCHEME = "pixelcsv://"
SIDE_PX = 48
N_PIXELS = SIDE_PX * SIDE_PX
"""A ``pixels`` cell holds 2,304 space-separated grey values 0..255, row-major."""
N_EMOTIONS = 7
"""``emotion`` codes are 0..6 (angry, disgust, fear, happy, sad, surprise, neutral: ``fer2013.FER2013_CLASSES``)."""


@dataclass(frozen=True, slots=True)
class PixelColumns:
    """Positions of the known columns in a pixel CSV's header; None where the file has no such column."""

    n_fields: int
    pixels: int
    emotion: int | None
    usage: int | None


def header_columns(cells: Sequence[str]) -> PixelColumns | None:
    """Columns of a header row (names stripped and case-insensitive), or None when no column is named ``pixels``.

    Kaggle's ``fer2013.csv`` has ``emotion,pixels,Usage``; its ``icml_face_data.csv`` has ``emotion, Usage, pixels``.
    """
    names = [c.strip().lstrip("\ufeff").lower() for c in cells]
    if "pixels" not in names:
        return None
    return PixelColumns(
        n_fields=len(names),
        pixels=names.index("pixels"),
        emotion=names.index("emotion") if "emotion" in names else None,
        usage=names.index("usage") if "usage" in names else None,
    )


def split_record(line: bytes) -> list[str]:
    """Cells of one CSV record given as its bytes (line ending optional; bytes that are not UTF-8 become U+FFFD)."""
    return next(csv.reader([line.decode("utf-8", errors="replace").rstrip("\r\n")]), [])


def parse_emotion(cell: str) -> int | None:
    """The FER2013 ``emotion`` code of a cell (0..6), or None when the cell holds no such code."""
    text = cell.strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) < N_EMOTIONS else None


def decode_pixels(cell: str) -> npt.NDArray[np.uint8]:
    """(48, 48) uint8 grey image of a ``pixels`` cell.

    Raises:
        SourceRecordError: not exactly 2,304 values, or a value that is not an integer 0..255.
    """
    tokens = cell.split()
    if len(tokens) != N_PIXELS:
        raise SourceRecordError(f"{len(tokens)} pixel values, expected {N_PIXELS} ({SIDE_PX}x{SIDE_PX} grey)")
    for i, token in enumerate(tokens):
        if not (token.isascii() and token.isdigit() and int(token) <= 255):
            raise SourceRecordError(f"pixel {i} is {token[:20]!r}, not an integer 0..255")
    return np.array([int(t) for t in tokens], dtype=np.uint8).reshape(SIDE_PX, SIDE_PX)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Lossless PNG (mode L) of a (H, W) uint8 image; deterministic bytes for the same pixels."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def pixel_csv_locator(csv_path: str | os.PathLike[str], offset: int, size: int) -> str:
    """Locator of one record of a pixel CSV: ``pixelcsv://<abs csv path>#<offset>:<size>`` (bytes of its line)."""
    return f"{PIXEL_CSV_SCHEME}{os.path.abspath(csv_path)}#{offset}:{size}"


def parse_pixel_csv_locator(locator: str) -> tuple[str, int, int]:
    """``(csv path, offset, size)`` of a ``pixelcsv://`` locator.

    Raises:
        SourceFormatError: a malformed locator.
    """
    path, sep, rng = locator[len(PIXEL_CSV_SCHEME) :].rpartition("#")
    offset_s, colon, size_s = rng.partition(":")
    well_formed = sep and colon and path and offset_s.isdigit() and size_s.isdigit()
    if not (locator.startswith(PIXEL_CSV_SCHEME) and well_formed):
        raise SourceFormatError(
            f"malformed pixel CSV locator {locator!r}; expected pixelcsv://<absolute csv path>#<offset>:<size>"
        )
    return path, int(offset_s), int(size_s)


def read_pixel_row(locator: str) -> bytes:
    """PNG bytes (48x48, mode L) of the record a ``pixelcsv://`` locator points at, checked whole.

    The header line gives the columns (re-read each call: one short read). The record must have as many fields as the
    header, an ``emotion`` code 0..6 (when the file has that column) and a valid ``pixels`` cell.

    Raises:
        SourceRecordError: the record is malformed (ingest quarantines it as ``bad_record``).
        SourceFormatError: a malformed locator, or a byte range that is no longer one whole record after the header
            (the CSV changed since listing: re-run the listing).
        OSError: the CSV cannot be read.
    """
    path, offset, size = parse_pixel_csv_locator(locator)
    with open(path, "rb") as fh:
        header = fh.readline()
        fh.seek(max(offset - 1, 0))
        data = fh.read(size + 1)
        at_end = data.endswith(b"\n") or fh.read(1) == b""
    columns = header_columns(split_record(header))
    if columns is None or offset < len(header) or len(data) != size + 1 or data[:1] != b"\n" or not at_end:
        raise SourceFormatError(
            f"pixel CSV locator {locator!r} no longer points at one whole record after the header of {path}; "
            "the CSV changed since listing: re-run the listing"
        )
    try:
        return encode_png(_record_pixels(split_record(data[1:]), columns))
    except SourceRecordError as exc:
        raise SourceRecordError(
            f"{exc} (record at byte {offset} of {path}); fix or delete that row of the CSV"
        ) from None


def _record_pixels(cells: list[str], columns: PixelColumns) -> npt.NDArray[np.uint8]:
    if len(cells) != columns.n_fields:
        raise SourceRecordError(f"{len(cells)} fields, the header has {columns.n_fields}")
    if columns.emotion is not None and parse_emotion(cells[columns.emotion]) is None:
        raise SourceRecordError(f"emotion {cells[columns.emotion][:20]!r} is not a FER2013 code 0..{N_EMOTIONS - 1}")
    return decode_pixels(cells[columns.pixels])
