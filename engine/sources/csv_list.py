"""CSV-list adapter: a CSV of ``path,label[,split]`` rows, paths relative to the CSV's folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

from engine.sources.base import SourceAdapter, SourceRow, parse_split, path_key, register_adapter
from engine.sources.csv_rows import parse_label, read_csv_rows


@register_adapter("csv_list")
class CsvListAdapter(SourceAdapter):
    """``cfg.path`` is the CSV file; rows in file order.

    Header optional (detected by column words: path, image, label ...). ``label`` is a class name or alias
    (a class the label space lacks gives -1), an index into the label space, or empty / ``-1`` for none.
    ``split`` (optional; empty means ``cfg.split``) accepts train/training, val/valid/validation,
    test/testing, unlabelled/unlabeled. Absolute paths are kept as they are. A path listed twice is an
    error. Key: :func:`path_key` of the normalised path as written.
    """

    download_hint = "set sources.{name}.path to a CSV of path,label[,split] rows (paths relative to the CSV)"

    def outside_root(self, row: SourceRow) -> str | None:
        """Absolute paths are documented: read wherever they point. A relative one must stay in the CSV's folder."""
        return None if os.path.isabs(row.orig_path) else super().outside_root(row)

    def list_rows(self) -> Iterator[SourceRow]:
        csv_path = self.require(self.root, "CSV list")
        base = csv_path.parent
        for where, cells in read_csv_rows(csv_path, min_fields=2, max_fields=3):
            written = os.path.normpath(cells[0]).replace(os.sep, "/")
            split = parse_split(cells[2], where=where) if len(cells) == 3 and cells[2] else self.cfg.split
            yield SourceRow(
                key=path_key(self.name, written),
                orig_path=written,
                locator=str(base / written),
                split=split,
                label=parse_label(cells[1], self.space, where=where),
            )
