"""FERPlus adapter: ``fer2013new.csv`` (or per-folder ``label.csv``) votes over the FER2013{Train,Valid,Test}/ PNGs."""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter
from engine.sources.fer2013 import FERPLUS_EMOTIONS, ferplus_majority

log = logging.getLogger(__name__)

CSV_NAME = "fer2013new.csv"
HEADER = (
    "Usage",
    "Image name",
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
"""fer2013new.csv's header, exactly; the 10 vote columns are in ``fer2013.VOTE_COLUMNS`` order."""
USAGE_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
FOLDER_SPLITS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
N_VOTES = 10
DOWNLOAD_HINT = (
    "download fer2013new.csv from https://github.com/microsoft/FERPlus, make the PNG folders with its "
    "src/generate_training_data.py -d <folder> -fer fer2013.csv -ferplus fer2013new.csv (fer2013.csv from Kaggle), "
    "and set sources.{name}.path to the folder holding fer2013new.csv (PNG folders next to it or in data/) or to "
    "the -d folder"
)

_Entry = tuple[str, str, str, list[str]]
"""(where, image folder, image name, the 10 vote cells) of one annotation row."""


@register_adapter("ferplus")
class FerPlusAdapter(SourceAdapter):
    """``cfg.path``: the folder holding ``fer2013new.csv`` (or the CSV itself) with the PNG folders
    ``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/`` next to it or in ``data/``; or, without fer2013new.csv, the
    folder of those PNG folders, each with the ``label.csv`` that Microsoft's generator writes.

    fer2013new.csv (header checked exactly) is read in file order: Usage Training / PublicTest / PrivateTest gives
    split train / val / test and folder FER2013Train / FER2013Valid / FER2013Test. ``label.csv`` (no header; name,
    an optional quoted box, 10 votes: 11 or 12 fields) is read Train, Valid, Test. Skipped and counted in the log:
    rows with an empty ``Image name`` (173 non-faces for which no PNG exists, absent from the fer2013 adapter's
    labels.csv too), and a row whose image name a later row of the same folder repeats (4 names in the real CSV:
    the generator overwrote that PNG with the later row's pixels, so the later row's votes describe the file).

    Label: :func:`~engine.sources.fer2013.ferplus_majority` of the votes, mapped by name into the label space
    (contempt needs ``label_space: ferplus8``; basic7 gives -1); a row without a majority (tie, unknown, NF) is kept
    with label -1, as the fer2013 adapter does with ``label_source: ferplus``. ``label_source`` is not used.
    Key ``<source>_<folder>_<stem>``, as the fer2013 adapter's. Image existence is not checked here: ingest
    quarantines a missing PNG as ``unreadable``. A bad Usage, field count or vote stops the listing with a
    SourceFormatError naming the line.
    """

    download_hint = DOWNLOAD_HINT

    def list_rows(self) -> Iterator[SourceRow]:
        hint = DOWNLOAD_HINT.format(name=self.name)
        is_csv = self.root.suffix.lower() == ".csv"
        folder = self.root.parent if is_csv else self.root
        csv_path = self.root if is_csv else folder / CSV_NAME
        if is_csv or csv_path.exists() or not _has_image_folders(folder):
            self.require(csv_path, CSV_NAME, hint=hint)
            images = next((d for d in (folder, folder / "data") if _has_image_folders(d)), None)
            if images is None:
                raise SourceFormatError(
                    f"source {self.name!r} ({self.cfg.format}): no PNG folder {', '.join(FOLDER_SPLITS)} in {folder} "
                    f"or {folder / 'data'}; {hint}"
                )
            entries = functools.partial(_new_csv_entries, csv_path)
        else:
            images = folder
            entries = functools.partial(_label_csv_entries, folder)
        yield from self._rows(entries, images, images.relative_to(folder).as_posix())

    def _rows(self, entries: Callable[[], Iterator[_Entry]], images: Path, images_rel: str) -> Iterator[SourceRow]:
        """Rows of the annotation ``entries`` (read twice: first to find the last row naming each file)."""
        to_space = names_to_space(FERPLUS_EMOTIONS, self.space)
        last = {(image_folder, name): i for i, (_, image_folder, name, _) in enumerate(entries()) if name}
        skipped = {"no_image_name": 0, "overwritten": 0}
        for i, (where, image_folder, name, votes) in enumerate(entries()):
            if not name:
                skipped["no_image_name"] += 1
                continue
            if last[(image_folder, name)] != i:
                skipped["overwritten"] += 1
                continue
            try:
                native = ferplus_majority([int(v) for v in votes])
            except ValueError:
                raise SourceFormatError(f"{where}: non-integer vote count in {votes}") from None
            yield SourceRow(
                key=make_key(self.name, image_folder, name.rsplit(".", 1)[0]),
                orig_path=f"{image_folder}/{name}" if images_rel == "." else f"{images_rel}/{image_folder}/{name}",
                locator=str(images / image_folder / name),
                split=FOLDER_SPLITS[image_folder],
                label=-1 if native < 0 else to_space[native],
            )
        if any(skipped.values()):
            log.info("source %s: skipped %s", self.name, skipped)


def _has_image_folders(path: Path) -> bool:
    return any((path / f).is_dir() for f in FOLDER_SPLITS)


def _new_csv_entries(csv_path: Path) -> Iterator[_Entry]:
    """Entries of fer2013new.csv, in file order."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = tuple(c.strip() for c in next(reader, []))
        if header != HEADER:
            raise SourceFormatError(
                f"{csv_path}:1: header {','.join(header)[:120]!r} is not FERPlus's {','.join(HEADER)!r}; "
                f"is this Microsoft's {CSV_NAME}?"
            )
        for n, fields in enumerate(reader, start=2):
            if not any(f.strip() for f in fields):
                continue
            where = f"{csv_path}:{n}"
            if len(fields) != len(HEADER):
                raise SourceFormatError(f"{where}: expected {len(HEADER)} comma-separated fields, got {len(fields)}")
            usage = fields[0].strip()
            if usage not in USAGE_FOLDERS:
                raise SourceFormatError(
                    f"{where}: unknown Usage {usage!r}; expected one of {', '.join(USAGE_FOLDERS)}"
                )
            yield where, USAGE_FOLDERS[usage], fields[1].strip(), fields[2:]


def _label_csv_entries(root: Path) -> Iterator[_Entry]:
    """Entries of ``<folder>/label.csv`` of each FERPlus folder present (Train, Valid, Test).

    Raises:
        SourceFormatError: a present folder without label.csv (its PNGs would have no votes).
    """
    for image_folder in FOLDER_SPLITS:
        path = root / image_folder / "label.csv"
        if not path.parent.is_dir():
            continue
        if not path.exists():
            raise SourceFormatError(
                f"{path} not found, but {path.parent} exists; Microsoft's generate_training_data.py writes one per "
                f"folder: re-run it, or point the source at the folder holding {CSV_NAME}"
            )
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for n, fields in enumerate(csv.reader(fh), start=1):
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) not in (1 + N_VOTES, 2 + N_VOTES):
                    raise SourceFormatError(
                        f"{path}:{n}: expected {1 + N_VOTES} or {2 + N_VOTES} comma-separated fields (name, optional "
                        f"box, {N_VOTES} votes), got {len(fields)}"
                    )
                yield f"{path}:{n}", image_folder, fields[0].strip(), fields[-N_VOTES:]
