"""MindFace adapter: the ABAW5 semi-supervised layout (label_train_img/ + CSVs, unlabel_train_img/)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from engine.errors import SourceFormatError
from engine.sources.base import SourceAdapter, SourceRow, iter_image_files, path_key, register_adapter
from engine.sources.csv_rows import parse_label, read_csv_rows

log = logging.getLogger(__name__)

PARTS: tuple[tuple[str, str | None, str], ...] = (
    ("label_train_img", "label_train.csv", "train"),
    ("unlabel_train_img", None, "unlabelled"),
    ("val_img", "val.csv", "val"),
    ("test_img", "test.csv", "test"),
)
"""(image folder, CSV or None, split), listed in this order."""


@register_adapter("mindface")
class MindFaceAdapter(SourceAdapter):
    """``cfg.path`` is the ``data/`` folder of harryjun-ustc/MindFace's README layout.

    The CSV format is NOT documented anywhere (formats.md §7); this adapter ASSUMES rows ``image,label``
    (header optional, detected by column words), ``image`` relative to the split's image folder (a leading
    ``<image folder>/`` is accepted too) and ``label`` a class name/alias, an index into the configured label
    space (set ``label_space: abaw8`` for ABAW's 8 classes), or empty / ``-1`` for none; a row with only the
    image has no label. ``unlabel_train_img/`` is listed recursively with label -1. A missing part is
    skipped; an image folder without its CSV is listed with label -1 (logged). Rows follow CSV order.
    Key: :func:`path_key` of ``<split>/<image path>``.
    """

    download_hint = (
        "set sources.{name}.path to the data/ folder of the MindFace layout (label_train_img/, unlabel_train_img/, "
        "val_img/, test_img/ and their CSVs; see https://github.com/harryjun-ustc/MindFace)"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        self.require(self.root, "MindFace data folder")
        present = [p for p in PARTS if (self.root / p[0]).is_dir() or (p[1] and (self.root / p[1]).is_file())]
        if not present:
            raise SourceFormatError(
                f"{self.root}: none of {', '.join(p[0] + '/' for p in PARTS)} found; "
                "expected the MindFace data/ layout"
            )
        for img_name, csv_name, split in present:
            img_dir = self.root / img_name
            csv_path = self.root / csv_name if csv_name else None
            if csv_path is not None and csv_path.is_file():
                self.require(img_dir, f"MindFace {img_name}/ (named by {csv_name})")
                yield from self._from_csv(csv_path, img_dir, split)
                continue
            if csv_path is not None:
                log.warning("source %s: %s missing: %s/ listed with label -1", self.name, csv_name, img_name)
            for path in iter_image_files(img_dir, label=f"source {self.name}"):
                yield self._row(img_dir, path.relative_to(img_dir).as_posix(), split, -1)

    def _from_csv(self, csv_path: Path, img_dir: Path, split: str) -> Iterator[SourceRow]:
        prefix = img_dir.name + "/"
        for where, cells in read_csv_rows(csv_path, min_fields=1, max_fields=2):
            rel = cells[0].replace("\\", "/")
            rel = rel[len(prefix) :] if rel.startswith(prefix) else rel
            label = parse_label(cells[1], self.space, where=where) if len(cells) == 2 else -1
            yield self._row(img_dir, rel, split, label)

    def _row(self, img_dir: Path, rel: str, split: str, label: int) -> SourceRow:
        return SourceRow(
            key=path_key(self.name, f"{split}/{rel}"),
            orig_path=f"{img_dir.name}/{rel}",
            locator=str(img_dir / rel),
            split=split,
            label=label,
        )
