"""ExpW adapter: ``label/label.lst`` faces (box + expression) over scene images in ``image/origin/``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter

log = logging.getLogger(__name__)

EXPW_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""``expression_label`` codes 0..6 (ExpW readme)."""


@register_adapter("expw")
class ExpwAdapter(SourceAdapter):
    """One row per face line of ``label.lst``, in file order; split ``cfg.split``.

    Line: ``image_name face_id top left right bottom confidence label`` (space-separated, no header).
    ``box = (left, top, right, bottom)``. Key ``<source>_<image stem>_<face id>`` (through :func:`make_key`,
    so stems with ``_`` get a hash suffix). An exact repeat of an earlier line is skipped (public loaders
    call ``drop_duplicates``); a different line for an already seen (image, face id) gets a ``_<n>`` key part.
    Image existence is not checked here (ingest quarantines unreadable files).
    """

    download_hint = (
        "download ExpW from its CUHK MMLab project page and set sources.{name}.path to the folder holding label/ and "
        "image/origin/"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        lst = self.require(self.root / "label" / "label.lst", "ExpW label/label.lst")
        images = self.require(self.root / "image" / "origin", "ExpW image/origin/ folder")
        to_space = names_to_space(EXPW_CLASSES, self.space)
        seen: dict[tuple[str, str], list[list[str]]] = {}
        skipped = 0
        with open(lst, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{lst}:{n}"
                if len(fields) != 8:
                    raise SourceFormatError(f"{where}: expected 8 space-separated fields, got {len(fields)}: {line!r}")
                name, face_id = fields[0], fields[1]
                previous = seen.setdefault((name, face_id), [])
                if fields in previous:
                    skipped += 1
                    continue
                previous.append(fields)
                try:
                    top, left, right, bottom = (int(float(v)) for v in fields[2:6])
                    code = int(fields[7])
                except ValueError:
                    raise SourceFormatError(f"{where}: non-numeric box or label in {line!r}") from None
                if not 0 <= code < len(EXPW_CLASSES):
                    raise SourceFormatError(f"{where}: expression label {code} outside 0..6")
                extra = (str(len(previous)),) if len(previous) > 1 else ()
                yield SourceRow(
                    key=make_key(self.name, name.rsplit(".", 1)[0], face_id, *extra),
                    orig_path=f"image/origin/{name}",
                    locator=str(images / name),
                    split=self.cfg.split,
                    label=to_space[code],
                    box=(left, top, right, bottom),
                )
        if skipped:
            log.info("source %s: skipped %d exact duplicate lines of %s", self.name, skipped, lst)
