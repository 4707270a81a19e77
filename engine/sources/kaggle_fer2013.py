"""Kaggle FER2013 adapter: ``fer2013.csv`` records (emotion, 48x48 pixels as text, Usage), each read as a PNG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from engine.errors import ConfigError, SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter
from engine.sources.fer2013 import FER2013_CLASSES, USAGE_SPLITS
from engine.sources.pixel_csv import PixelColumns, header_columns, parse_emotion, pixel_csv_locator, split_record

log = logging.getLogger(__name__)

CSV_NAME = "fer2013.csv"
DOWNLOAD_HINT = (
    "download it from https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-"
    "challenge/data (fer2013.tar.gz holds fer2013/fer2013.csv) and set sources.{name}.path to the file or its folder"
)


@register_adapter("kaggle_fer2013")
class KaggleFer2013Adapter(SourceAdapter):
    """``cfg.path``: ``fer2013.csv`` itself (any ``.csv`` whose header names a ``pixels`` column) or its folder.

    One row per record, in file order (blank lines skipped). Columns are found by header name (stripped,
    case-insensitive), so ``emotion,pixels,Usage`` and ``icml_face_data.csv``'s ``emotion, Usage, pixels`` both work;
    a file without ``Usage`` gives ``cfg.split``, one without ``emotion`` label -1. Usage Training → train,
    PublicTest → val, PrivateTest → test; ``emotion`` 0..6 (angry … neutral) is mapped by name into the label space.

    The locator is the record's byte range (``pixelcsv://``, O(1) to read); reading it checks the whole record and
    decodes the pixels to a lossless 48x48 grey PNG. A record with a wrong pixel count, a value that is not an integer
    0..255, an emotion that is no code 0..6 (listed with label -1) or a wrong field count is still listed, and fails
    when read, so ingest quarantines it as ``bad_record`` with the problem as detail. An unknown or missing Usage
    stops the listing with a SourceFormatError naming the line (the file is cut off or is not fer2013.csv).
    Key ``<source>_<csv stem>_<0-based record index, 7 digits>`` (FER+'s row order); orig_path ``<csv name>:<line>``.
    """

    download_hint = DOWNLOAD_HINT

    def list_rows(self) -> Iterator[SourceRow]:
        if self.cfg.label_source != "fer2013":
            raise ConfigError(
                f"sources.{self.name}.label_source: {self.cfg.label_source!r} needs FER+ votes, which {CSV_NAME} "
                "lacks; use format ferplus with fer2013new.csv, or set label_source: fer2013"
            )
        csv_path = self.root if self.root.suffix.lower() == ".csv" else self.root / CSV_NAME
        self.require(csv_path, csv_path.name)
        to_space = names_to_space(FER2013_CLASSES, self.space)
        no_code = 0
        with open(csv_path, "rb") as fh:
            header = fh.readline()
            columns = header_columns(split_record(header))
            if columns is None:
                raise SourceFormatError(
                    f"{csv_path}:1: no header naming a 'pixels' column (got {header[:60]!r}); expected the Kaggle "
                    f"{CSV_NAME} header emotion,pixels,Usage"
                )
            offset, index = len(header), 0
            for line_no, line in enumerate(fh, start=2):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                split, code = self._split_and_code(split_record(line), columns, f"{csv_path}:{line_no}")
                if code is None and columns.emotion is not None:
                    no_code += 1
                yield SourceRow(
                    key=make_key(self.name, csv_path.stem, f"{index:07d}"),
                    orig_path=f"{csv_path.name}:{line_no}",
                    locator=pixel_csv_locator(csv_path, start, len(line)),
                    split=split,
                    label=-1 if code is None else to_space[code],
                )
                index += 1
        if no_code:
            log.warning(
                "source %s: %d records of %s have no emotion code 0..6; ingest quarantines them as bad_record",
                self.name,
                no_code,
                csv_path,
            )

    def _split_and_code(self, cells: list[str], columns: PixelColumns, where: str) -> tuple[str, int | None]:
        """Split (from Usage, else ``cfg.split``) and emotion code (None: missing or invalid) of one record."""
        split = self.cfg.split
        if columns.usage is not None:
            usage = cells[columns.usage].strip() if columns.usage < len(cells) else ""
            if usage not in USAGE_SPLITS:
                raise SourceFormatError(
                    f"{where}: Usage {usage[:20]!r} (in a record of {len(cells)} fields) is not one of "
                    f"{', '.join(USAGE_SPLITS)}; the file is cut off or edited: download {CSV_NAME} again, or delete "
                    "that line"
                )
            split = USAGE_SPLITS[usage]
        emotion = columns.emotion
        return split, parse_emotion(cells[emotion]) if emotion is not None and emotion < len(cells) else None
