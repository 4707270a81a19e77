"""DiffusionFER adapter: DiffusionEmotion_S/dataset_sheet.csv over the unzipped DiffusionEmotion_S/cropped/."""

from __future__ import annotations

from collections.abc import Iterator

from engine.errors import SourceFormatError
from engine.labels import names_to_space
from engine.sources.base import SourceAdapter, SourceRow, path_key, register_adapter
from engine.sources.csv_rows import read_csv_rows

DIFFUSION_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry")
"""``expression`` codes 0..6 (AffectNet order)."""
SHEET = "DiffusionEmotion_S/dataset_sheet.csv"
SHEET_PREFIX = "DiffusionEmotion_S_cropped/"
DISK_PREFIX = "DiffusionEmotion_S/cropped/"


@register_adapter("diffusionfer")
class DiffusionFerAdapter(SourceAdapter):
    """Rows of ``dataset_sheet.csv`` in file order; split ``cfg.split``.

    ``cfg.path`` is the folder holding ``DiffusionEmotion_S/`` (or ``DiffusionEmotion_S`` itself). Sheet
    paths ``DiffusionEmotion_S_cropped/<class>/<name>.png`` are read from ``DiffusionEmotion_S/cropped/...``.
    The label is the ``expression`` code (not the folder name: the two often differ), mapped by name into
    the label space. Valence and arousal are kept. Key: :func:`path_key` of the path under ``cropped/``
    (``<source>_neutral_<stem>_png``, hashed when the stem has ``_``).
    """

    download_hint = (
        "download https://huggingface.co/datasets/FER-Universe/DiffusionFER, unzip DiffusionEmotion_S/cropped/*.zip "
        "and set sources.{name}.path to the folder holding DiffusionEmotion_S/"
    )

    def list_rows(self) -> Iterator[SourceRow]:
        base = self.root.parent if (self.root / "dataset_sheet.csv").is_file() else self.root
        sheet = self.require(base / SHEET, "DiffusionFER dataset_sheet.csv")
        to_space = names_to_space(DIFFUSION_CLASSES, self.space)
        for where, cells in read_csv_rows(sheet, min_fields=4, max_fields=4):
            written = cells[0]
            if written.startswith(SHEET_PREFIX):
                rel = DISK_PREFIX + written[len(SHEET_PREFIX) :]
            elif written.startswith(DISK_PREFIX):
                rel = written
            else:
                raise SourceFormatError(f"{where}: path {written!r} does not start with {SHEET_PREFIX!r}")
            try:
                valence, arousal, code = float(cells[1]), float(cells[2]), int(cells[3])
            except ValueError:
                raise SourceFormatError(f"{where}: non-numeric valence, arousal or expression: {cells[1:]}") from None
            if not 0 <= code < len(DIFFUSION_CLASSES):
                raise SourceFormatError(f"{where}: expression {code} outside 0..{len(DIFFUSION_CLASSES) - 1}")
            yield SourceRow(
                key=path_key(self.name, rel[len(DISK_PREFIX) :]),
                orig_path=self.rel(base / rel),
                locator=str(base / rel),
                split=self.cfg.split,
                label=to_space[code],
                valence=valence,
                arousal=arousal,
            )
