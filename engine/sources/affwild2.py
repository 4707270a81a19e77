"""Aff-Wild2 adapter: per-video EXPR annotation files over the cropped_aligned/<video>/<NNNNN>.jpg frames."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from engine.errors import SourceFormatError, UnknownLabelError
from engine.labels import canonical_name, names_to_space
from engine.sources.base import SourceAdapter, SourceRow, make_key, register_adapter

log = logging.getLogger(__name__)

EXPR_DIRS = ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge")
"""EXPR folder names of the ABAW editions (2020; 3rd and 5th; 6th)."""
SPLIT_DIRS = {"Training_Set": "train", "Train_Set": "train", "Validation_Set": "val"}
FRAME_ROOTS = ("cropped_aligned", "cropped_aligned_new_50_vids")
_SEARCH_DEPTH = 3


@register_adapter("affwild2")
class AffWild2Adapter(SourceAdapter):
    """One row per annotated frame whose image exists: train videos, then val, sorted by name.

    The EXPR folder (any of EXPR_DIRS) is searched under ``cfg.path`` (at most 3 levels, so every edition's
    ``annotations/``, ``Third ABAW Annotations/`` or ``6th_ABAW_Annotations/`` wrapper works); its
    ``Training_Set``/``Train_Set`` → train and ``Validation_Set`` → val hold ``<video>.txt``. Line 0 is the
    header naming the classes (``Neutral,Anger,...,Other``): index = position in the header, mapped by name
    into the label space. Line i (i >= 1) is frame ``cropped_aligned/<video>/%05d.jpg % i`` (1-based); -1
    (ignore) gives label -1. Lines whose frame image is missing are skipped. Frames are looked up in
    ``cropped_aligned/`` then ``cropped_aligned_new_50_vids/`` (searched like the EXPR folder).
    ``group`` = video (``_left``/``_right`` kept: two faces), ``frame`` = i, key ``<source>_<video>_<NNNNN>``.
    """

    download_hint = (
        "request Aff-Wild2 under its EULA at https://ibug.doc.ic.ac.uk/resources/aff-wild2/ and set "
        "sources.{name}.path to the folder holding the EXPR annotations and cropped_aligned/"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        self.require(self.root, "Aff-Wild2 root")
        expr = self._find_one(EXPR_DIRS, "EXPR annotation folder")
        frame_roots = [p for name in FRAME_ROOTS for p in _find_dirs(self.root, {name})]
        if not frame_roots:
            raise SourceFormatError(
                f"{self.root}: no cropped_aligned/ frame folder found within {_SEARCH_DEPTH} levels"
            )
        split_dirs = sorted(
            (d for d in expr.iterdir() if d.name in SPLIT_DIRS), key=lambda d: (SPLIT_DIRS[d.name] != "train", d.name)
        )
        if not split_dirs:
            raise SourceFormatError(f"{expr}: no {' / '.join(SPLIT_DIRS)} folder")
        for split_dir in split_dirs:
            for ann in sorted(split_dir.glob("*.txt")):
                yield from self._video(ann, SPLIT_DIRS[split_dir.name], frame_roots)

    def _video(self, ann: Path, split: str, frame_roots: list[Path]) -> Iterator[SourceRow]:
        video = ann.stem
        frame_dir = next((r / video for r in frame_roots if (r / video).is_dir()), None)
        if frame_dir is None:
            log.warning("source %s: no frame folder for video %s (%s): skipped", self.name, video, ann)
            return
        present = set(os.listdir(frame_dir))
        lines = ann.read_text(encoding="utf-8").rstrip().splitlines()
        if not lines:
            raise SourceFormatError(f"{ann}: empty annotation file (expected a header line)")
        to_space = names_to_space(self._header(lines[0], ann), self.space)
        for i, text in enumerate(lines[1:], start=1):
            try:
                code = int(text.strip())
            except ValueError:
                raise SourceFormatError(f"{ann}:{i + 1}: expected one integer label, got {text!r}") from None
            if not -1 <= code < len(to_space):
                raise SourceFormatError(f"{ann}:{i + 1}: label {code} outside -1..{len(to_space) - 1}")
            name = f"{i:05d}.jpg"
            if name not in present:
                continue
            path = frame_dir / name
            yield SourceRow(
                key=make_key(self.name, video, f"{i:05d}"),
                orig_path=self.rel(path),
                locator=str(path),
                split=split,
                label=-1 if code < 0 else to_space[code],
                group=video,
                frame=i,
            )

    def _header(self, line: str, ann: Path) -> tuple[str, ...]:
        names = tuple(n.strip() for n in line.split(","))
        try:
            for n in names:
                canonical_name(n)
        except UnknownLabelError as exc:
            raise SourceFormatError(
                f"{ann}: header {line!r} must list the class names (e.g. "
                f"Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other): {exc}"
            ) from None
        return names

    def _find_one(self, names: tuple[str, ...], what: str) -> Path:
        found = _find_dirs(self.root, set(names))
        if len(found) != 1:
            state = "none" if not found else ", ".join(str(p) for p in found)
            raise SourceFormatError(
                f"{self.root}: need exactly one {what} named {' / '.join(names)} within {_SEARCH_DEPTH} levels, "
                f"found {state}; point sources.<name>.path at one Aff-Wild2 edition"
            )
        return found[0]


def _find_dirs(root: Path, names: set[str], depth: int = _SEARCH_DEPTH) -> list[Path]:
    """Folders named one of ``names`` under ``root`` (breadth-limited; never enters a matched or frame folder)."""
    found: list[Path] = []
    try:
        children = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return found
    for entry in sorted(children, key=lambda e: e.name):
        if entry.name in names:
            found.append(Path(entry.path))
        elif depth > 1 and entry.name not in FRAME_ROOTS:
            found.extend(_find_dirs(Path(entry.path), names, depth - 1))
    return found
