"""Flat-folder adapter: every image under a folder, recursively, unlabelled, one split."""

from __future__ import annotations

from collections.abc import Iterator

from engine.sources.base import SourceAdapter, SourceRow, iter_image_files, path_key, register_adapter


@register_adapter("flat_folder")
class FlatFolderAdapter(SourceAdapter):
    """Every image (``IMAGE_SUFFIXES``) under ``cfg.path`` (sorted walk); label -1, split ``cfg.split``."""

    download_hint = "set sources.{name}.path to a folder of images"

    def list_rows(self) -> Iterator[SourceRow]:
        self.require(self.root, "image folder")
        for path in iter_image_files(self.root, label=f"source {self.name}"):
            rel = self.rel(path)
            yield SourceRow(key=path_key(self.name, rel), orig_path=rel, locator=str(path), split=self.cfg.split)
