"""AffectNet adapter: Manually_Annotated_file_lists/{training,validation}.csv over Manually_Annotated_Images/."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import Occurrences, SourceAdapter, SourceRow, make_key, register_adapter

log = logging.getLogger(__name__)

AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
"""``expression`` codes 0..7; 8 None, 9 Uncertain and 10 No-Face are no emotion class."""
NO_FACE = 10
FILES = (("training.csv", "train"), ("validation.csv", "val"))
HEADER_FIRST = "subDirectory_filePath"
N_FIELDS = 9


@register_adapter("affectnet")
class AffectNetAdapter(SourceAdapter):
    """Rows of training.csv (train) then validation.csv (val), in file order.

    Columns ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,
    arousal``; the header row is detected (first field ``subDirectory_filePath``), so header-less copies work.
    ``box = (x, y, x + w, y + h)``. Codes 0..7 are mapped by name into the label space (a class the space
    lacks, e.g. Contempt in basic7, gives -1); codes 8 (None) and 9 (Uncertain) are kept as label -1 (faces
    for the unlabelled pool); code 10 (No-Face) rows and rows with a negative width or height are skipped
    (counted in the log). Valence/arousal of -2 (undefined) become None.
    Key ``<source>_<subdir>_<stem>``, plus ``_<n>`` for the n-th repeat of the same image path.
    """

    download_hint = (
        "request AffectNet from http://mohammadmahoor.com/affectnet/ and set sources.{name}.path to the folder "
        "holding Manually_Annotated_file_lists/ and Manually_Annotated_Images/"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        lists = self.require(self.root / "Manually_Annotated_file_lists", "AffectNet Manually_Annotated_file_lists/")
        images = self.root / "Manually_Annotated_Images"
        to_space = names_to_space(AFFECTNET_CLASSES, self.space)
        repeats = Occurrences()
        for file_name, split in FILES:
            path = self.require(lists / file_name, f"AffectNet {file_name}")
            skipped = {"no_face": 0, "bad_box": 0}
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for n, fields in enumerate(csv.reader(fh), start=1):
                    if not fields or (n == 1 and fields[0].strip() == HEADER_FIRST):
                        continue
                    row = self._row(fields, f"{path}:{n}", split, images, to_space, repeats, skipped)
                    if row is not None:
                        yield row
            if any(skipped.values()):
                log.info("source %s: %s skipped %s", self.name, file_name, skipped)

    def _row(
        self,
        fields: list[str],
        where: str,
        split: str,
        images: Path,
        to_space: tuple[int, ...],
        repeats: Occurrences,
        skipped: dict[str, int],
    ) -> SourceRow | None:
        if len(fields) != N_FIELDS:
            raise SourceFormatError(f"{where}: expected {N_FIELDS} comma-separated fields, got {len(fields)}")
        rel = fields[0].strip()
        try:
            x, y, w, h = (int(float(v)) for v in fields[1:5])
            code = int(fields[6])
            valence, arousal = float(fields[7]), float(fields[8])
        except ValueError:
            raise SourceFormatError(
                f"{where}: non-numeric box, expression or valence/arousal: {fields[:5] + fields[6:]}"
            ) from None
        if not 0 <= code <= NO_FACE:
            raise SourceFormatError(f"{where}: expression {code} outside 0..{NO_FACE}")
        if code == NO_FACE:
            skipped["no_face"] += 1
            return None
        if w < 0 or h < 0:
            skipped["bad_box"] += 1
            return None
        folder, _, name = rel.rpartition("/")
        parts = [*folder.split("/"), name.rsplit(".", 1)[0]] if folder else [name.rsplit(".", 1)[0]]
        return SourceRow(
            key=make_key(self.name, *parts, *repeats.suffix(rel)),
            orig_path=f"Manually_Annotated_Images/{rel}",
            locator=str(images / rel),
            split=split,
            label=to_space[code] if code < len(to_space) else -1,
            valence=None if valence == -2 else valence,
            arousal=None if arousal == -2 else arousal,
            box=(x, y, x + w, y + h),
        )
