"""Image-folder adapter: ``root/<class>/<images>`` or ``root/<split>/<class>/<images>``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from engine.errors import SourceFormatError, UnknownLabelError
from engine.labels import project_name
from engine.sources.base import (
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    SourceAdapter,
    SourceRow,
    iter_image_files,
    path_key,
    register_adapter,
)

log = logging.getLogger(__name__)


@register_adapter("image_folder")
class ImageFolderAdapter(SourceAdapter):
    """Class sub-folders named by any label alias (``happy``, ``Anger`` ...), searched recursively.

    When every top folder is a split name (train/training, val/valid/validation, test/testing,
    unlabelled/unlabeled) the layout is ``root/<split>/<class>/``; images lying directly in a split folder
    get label -1. Otherwise every row gets ``cfg.split``. A class folder the label space lacks gives -1
    (logged); a folder name that is no known class (digits included: their meaning is not documented) is an
    error. Images directly under ``root`` are skipped (logged). Key: :func:`path_key` of the relative path.
    """

    download_hint = "set sources.{name}.path to a folder of <class>/ sub-folders (optionally under <split>/ folders)"

    def list_rows(self) -> Iterator[SourceRow]:
        self.require(self.root, "image folder")
        tops = _subdirs(self.root)
        split_dirs = [d for d in tops if d.name.lower() in SPLIT_ALIASES]
        if split_dirs and len(split_dirs) != len(tops):
            others = sorted(d.name for d in tops if d not in split_dirs)
            raise SourceFormatError(
                f"{self.root}: mixes split folders {[d.name for d in split_dirs]} with other folders {others}; "
                "use either root/<class>/ or root/<split>/<class>/"
            )
        if split_dirs:
            for split_dir in split_dirs:
                split = SPLIT_ALIASES[split_dir.name.lower()]
                for path in _direct_images(split_dir):
                    yield self._row(path, split, -1)
                yield from self._classes(split_dir, split)
        else:
            yield from self._classes(self.root, self.cfg.split)
        loose = sum(1 for _ in _direct_images(self.root))
        if loose:
            log.warning(
                "source %s: skipped %d images directly under %s (no class folder)", self.name, loose, self.root
            )

    def _classes(self, parent: Path, split: str) -> Iterator[SourceRow]:
        for class_dir in _subdirs(parent):
            try:
                label = project_name(class_dir.name, self.space)
            except UnknownLabelError as exc:
                raise UnknownLabelError(f"class folder {class_dir}: {exc}") from None
            if label < 0:
                log.warning(
                    "source %s: class folder %s is not in label space %s: label -1",
                    self.name,
                    class_dir,
                    self.space.name,
                )
            for path in iter_image_files(class_dir, label=f"source {self.name}"):
                yield self._row(path, split, label)

    def _row(self, path: Path, split: str, label: int) -> SourceRow:
        rel = self.rel(path)
        return SourceRow(key=path_key(self.name, rel), orig_path=rel, locator=str(path), split=split, label=label)


def _subdirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def _direct_images(parent: Path) -> list[Path]:
    return sorted(
        p
        for p in parent.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
