"""FER2013 adapter: PNG members of fer2013_ferplus_png.tar plus labels.csv (FER2013 label or FER+ votes)."""

from __future__ import annotations

import csv
import functools
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter, tar_locator

log = logging.getLogger(__name__)

TAR_NAME = "fer2013_ferplus_png.tar"
LABELS_NAME = "labels.csv"
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""``fer2013_label`` codes 0..6."""
VOTE_COLUMNS = (
    "ferplus_neutral",
    "ferplus_happiness",
    "ferplus_surprise",
    "ferplus_sadness",
    "ferplus_anger",
    "ferplus_disgust",
    "ferplus_fear",
    "ferplus_contempt",
    "ferplus_unknown",
    "ferplus_NF",
)
FERPLUS_EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
"""The first 8 vote columns; the last two (unknown, NF) are not emotions."""


def ferplus_majority(votes: Sequence[int]) -> int:
    """FER+ "majority" label: index into FERPLUS_EMOTIONS, or -1.

    Microsoft's reader (FERPlus ``src/ferplus.py``, ``_process_data`` mode ``majority``): drop every count of a
    single vote (outlier removal), then the top count must be more than half of the remaining votes; a
    winner that is ``unknown`` or ``NF`` gives -1. A tie can never pass the half rule, so ties give -1.

    Args:
        votes: the 10 vote counts in VOTE_COLUMNS order.
    """
    kept = [v if v > 1 else 0 for v in votes]
    top = max(kept)
    if top == 0 or top * 2 <= sum(kept):
        return -1
    winner = kept.index(top)
    return winner if winner < len(FERPLUS_EMOTIONS) else -1


@functools.lru_cache(maxsize=4)
def _tar_index(tar_path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """Member name → (data offset, size) of the regular files of an uncompressed tar (cached per file state)."""
    index: dict[str, tuple[int, int]] = {}
    with tarfile.open(tar_path, "r:") as tf:
        while (member := tf.next()) is not None:
            tf.members = []  # type: ignore[attr-defined]  # tarfile would keep every member
            if member.isfile():
                index[member.name] = (member.offset_data, member.size)
    return index


@register_adapter("fer2013")
class Fer2013Adapter(SourceAdapter):
    """``cfg.path``: the folder holding ``fer2013_ferplus_png.tar`` and ``labels.csv`` (or the tar itself).

    Rows follow labels.csv order. Splits: Training → train, PublicTest → val, PrivateTest → test.
    ``label_source: fer2013`` uses ``fer2013_label`` (-1 = unresolved stays -1); ``ferplus`` uses
    :func:`ferplus_majority`; either is mapped by name into the label space (a class the space lacks, e.g.
    Contempt in basic7, gives -1). Key ``<source>_<folder>_<stem>`` (``fer2013_FER2013Train_fer0000000``).
    """

    download_hint = (
        "this layout is the repository's repack (../shared/data/fer2013); for the public files use format "
        "kaggle_fer2013 (fer2013.csv) or ferplus (fer2013new.csv), or set sources.{name}.path to the folder holding "
        "fer2013_ferplus_png.tar and labels.csv"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        is_tar = self.root.suffix == ".tar"
        folder = self.root.parent if is_tar else self.root
        tar_path = self.require(self.root if is_tar else folder / TAR_NAME, "FER2013 tar")
        labels_path = self.require(folder / LABELS_NAME, "FER2013 labels.csv")
        st = os.stat(tar_path)
        index = _tar_index(str(tar_path), st.st_size, st.st_mtime_ns)
        use_ferplus = self.cfg.label_source == "ferplus"
        to_space = names_to_space(FERPLUS_EMOTIONS if use_ferplus else FER2013_CLASSES, self.space)
        with open(labels_path, newline="") as fh:
            reader = csv.DictReader(fh)
            needed = {"path", "usage", "fer2013_label", *VOTE_COLUMNS}
            missing = needed - set(reader.fieldnames or ())
            if missing:
                raise SourceFormatError(
                    f"{labels_path}: missing columns {sorted(missing)}; is this the FER2013 labels.csv?"
                )
            for line_no, rec in enumerate(reader, start=2):
                yield self._row(rec, line_no, labels_path, tar_path, index, to_space, use_ferplus)

    def _row(
        self,
        rec: dict[str, str],
        line_no: int,
        labels_path: Path,
        tar_path: Path,
        index: dict[str, tuple[int, int]],
        to_space: tuple[int, ...],
        use_ferplus: bool,
    ) -> SourceRow:
        where = f"{labels_path}:{line_no}"
        member = rec["path"]
        if member not in index:
            raise SourceFormatError(f"{where}: {member!r} is not a file in {tar_path}; the tar and labels.csv differ")
        split = USAGE_SPLITS.get(rec["usage"])
        if split is None:
            raise SourceFormatError(
                f"{where}: unknown usage {rec['usage']!r}; expected one of {', '.join(USAGE_SPLITS)}"
            )
        try:
            native = (
                ferplus_majority([int(rec[c]) for c in VOTE_COLUMNS]) if use_ferplus else int(rec["fer2013_label"])
            )
        except ValueError as exc:
            raise SourceFormatError(f"{where}: non-integer label or vote ({exc})") from None
        if not -1 <= native < len(to_space):
            raise SourceFormatError(f"{where}: fer2013_label {native} outside -1..{len(to_space) - 1}")
        folder, _, name = member.rpartition("/")
        offset, size = index[member]
        return SourceRow(
            key=make_key(self.name, *folder.split("/"), name.rsplit(".", 1)[0])
            if folder
            else make_key(self.name, name),
            orig_path=member,
            locator=tar_locator(tar_path, offset, size),
            split=split,
            label=-1 if native < 0 else to_space[native],
        )
