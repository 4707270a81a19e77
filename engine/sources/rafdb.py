"""RAF-DB basic adapter: ``EmoLabel/list_patition_label.txt`` (sic) over ``Image/aligned/`` or ``Image/original/``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter

log = logging.getLogger(__name__)

LIST_PATH = "EmoLabel/list_patition_label.txt"
"""The release's own spelling ("patition")."""
RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""Labels 1..7 in order: the list file's labels are **1-based** (label 1 is Surprise)."""
PREFIX_SPLITS = {"train": "train", "test": "test"}
"""Image-name prefix → split; the split comes only from the prefix (``train_00001.jpg``, ``test_0001.jpg``)."""
DOWNLOAD_HINT = (
    "request RAF-DB from http://www.whdeng.cn/RAF/model1.html, unpack its basic set and set sources.{name}.path to "
    "the folder holding EmoLabel/ and Image/"
)


@register_adapter("rafdb")
class RafDbAdapter(SourceAdapter):
    """``cfg.path``: the RAF-DB basic folder holding ``EmoLabel/`` and ``Image/``.

    One row per line of the list file, in file order (blank lines skipped): ``<image name> <label 1..7>``, mapped by
    name into the label space (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral). Images:
    ``Image/aligned/<stem>_aligned.jpg`` (the 100x100 aligned faces loaders train on) when ``Image/aligned/`` exists,
    else ``Image/original/<image name>`` (whole photos: set ``ingest.detect_faces`` to crop them); the folder used is
    logged. Key ``<source>_<prefix>_<number>`` (``rafdb_train_00001``). Image existence is not checked here: ingest
    quarantines a missing file as ``unreadable``. A line that is not ``<name> <label>``, a label outside 1..7 or a
    name without a train_/test_ prefix stops the listing with a SourceFormatError naming the line.
    """

    download_hint = DOWNLOAD_HINT

    def list_rows(self) -> Iterator[SourceRow]:
        lst = self.require(self.root / LIST_PATH, f"RAF-DB {LIST_PATH}")
        aligned = (self.root / "Image" / "aligned").is_dir()
        folder = "Image/aligned" if aligned else "Image/original"
        self.require(self.root / folder, "RAF-DB image folder (Image/aligned/, else Image/original/)")
        log.info("source %s: reading images from %s", self.name, self.root / folder)
        to_space = names_to_space(RAFDB_CLASSES, self.space)
        with open(lst, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                fields = line.split()
                if not fields:
                    continue
                name, label = self._parse(fields, f"{lst}:{n}")
                stem = name.rsplit(".", 1)[0]
                file_name = f"{stem}_aligned.jpg" if aligned else name
                yield SourceRow(
                    key=make_key(self.name, *stem.split("_")),
                    orig_path=f"{folder}/{file_name}",
                    locator=str(self.root / folder / file_name),
                    split=PREFIX_SPLITS[stem.split("_", 1)[0]],
                    label=to_space[label - 1],
                )

    @staticmethod
    def _parse(fields: list[str], where: str) -> tuple[str, int]:
        """(image name, label 1..7) of one list line's fields."""
        if len(fields) != 2:
            raise SourceFormatError(f"{where}: expected '<image name> <label 1..7>', got {' '.join(fields)[:80]!r}")
        name, code = fields
        if not (code.isascii() and code.isdigit() and 1 <= int(code) <= len(RAFDB_CLASSES)):
            raise SourceFormatError(
                f"{where}: label {code!r} is outside 1..7; RAF-DB basic labels are 1-based (1 Surprise ... 7 "
                f"Neutral): point sources.<name>.path at the release's own {LIST_PATH}, not a 0-based derived list"
            )
        if name.split("_", 1)[0] not in PREFIX_SPLITS or "_" not in name:
            raise SourceFormatError(
                f"{where}: image name {name!r} does not start with train_ or test_, the only source of its split"
            )
        return name, int(code)
