"""CSV helpers shared by the list-file adapters: header detection and label-cell parsing."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from engine.errors import SourceFormatError, UnknownLabelError
from engine.labels import LabelSpace, project_name

HEADER_WORDS = frozenset(
    {
        "path",
        "image",
        "img",
        "file",
        "filename",
        "file_name",
        "image_path",
        "image_name",
        "name",
        "label",
        "labels",
        "expression",
        "emotion",
        "class",
        "category",
        "split",
        "usage",
        "subdirectory_filepath",
        "valence",
    }
)
"""A first row whose first or second cell is one of these words (lower-cased) is a header."""


def read_csv_rows(path: Path, *, min_fields: int, max_fields: int) -> Iterator[tuple[str, list[str]]]:
    """``(where, fields)`` per data row of a CSV: header (if any) and blank lines skipped, cells stripped.

    ``where`` is ``<path>:<line>`` for error messages.

    Raises:
        SourceFormatError: a row with fewer than ``min_fields`` or more than ``max_fields`` cells.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, fields in enumerate(csv.reader(fh), start=1):
            cells = [f.strip() for f in fields]
            if not any(cells):
                continue
            if n == 1 and is_header(cells):
                continue
            if not min_fields <= len(cells) <= max_fields:
                raise SourceFormatError(
                    f"{path}:{n}: expected {min_fields}..{max_fields} comma-separated fields, "
                    f"got {len(cells)}: {fields!r}"
                )
            yield f"{path}:{n}", cells


def is_header(cells: list[str]) -> bool:
    """True when the row names columns rather than holding data."""
    return any(c.lower() in HEADER_WORDS for c in cells[:2])


def parse_label(cell: str, space: LabelSpace, *, where: str) -> int:
    """Label of a CSV cell: empty or ``-1`` → -1; an integer → that index of ``space``; else a class name.

    A class name the space lacks gives -1 (rule of ``labels.project_name``).

    Raises:
        SourceFormatError: an index outside ``space``.
        UnknownLabelError: a name that is no known class.
    """
    text = cell.strip()
    if text in ("", "-1"):
        return -1
    if text.lstrip("+").isdigit():
        index = int(text)
        if index >= len(space):
            raise SourceFormatError(
                f"{where}: label index {index} is outside label space {space.name!r} ({len(space)} classes: "
                f"{', '.join(space.classes)}); set sources.<name>.label_space to the space the indices refer to"
            )
        return index
    try:
        return project_name(text, space)
    except UnknownLabelError as exc:
        raise UnknownLabelError(f"{where}: {exc}") from None
