"""Label spaces (abaw8, basic7, ferplus8, coarse5, negative4), the label-name alias table and index mappings."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError, UnknownLabelError

if TYPE_CHECKING:
    from engine.config import Config

CANONICAL_NAMES: tuple[str, ...] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
    "Contempt",
    "Negative",
)
"""Every class name a label space may hold."""

_ALIASES: dict[str, str] = {
    "neutral": "Neutral",
    "neutrality": "Neutral",
    "anger": "Anger",
    "angry": "Anger",
    "disgust": "Disgust",
    "disgusted": "Disgust",
    "fear": "Fear",
    "fearful": "Fear",
    "afraid": "Fear",
    "scared": "Fear",
    "happiness": "Happiness",
    "happy": "Happiness",
    "joy": "Happiness",
    "sadness": "Sadness",
    "sad": "Sadness",
    "surprise": "Surprise",
    "surprised": "Surprise",
    "other": "Other",
    "others": "Other",
    "contempt": "Contempt",
    "contemptuous": "Contempt",
    "negative": "Negative",
}
"""Lower-cased native names (FER2013, FER+, ExpW, AffectNet, Aff-Wild2, RAF-DB, DiffusionFER) → canonical name."""

COARSE_OF: Mapping[str, str] = {
    "Neutral": "Neutral",
    "Happiness": "Happiness",
    "Surprise": "Surprise",
    "Other": "Other",
    "Anger": "Negative",
    "Disgust": "Negative",
    "Fear": "Negative",
    "Sadness": "Negative",
    "Negative": "Negative",
}
"""Fine class → its coarse5 class (CFC-SP). Contempt has no coarse class (CFC-SP works on abaw8)."""


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of canonical class names; a label is an index into ``classes``."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for cls in self.classes:
            if cls not in CANONICAL_NAMES:
                raise UnknownLabelError(
                    f"label space {self.name!r}: {cls!r} is not a canonical class name; "
                    f"use one of {', '.join(CANONICAL_NAMES)}"
                )
        if len(set(self.classes)) != len(self.classes):
            raise UnknownLabelError(f"label space {self.name!r} repeats a class: {self.classes}")

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, name_or_alias: object) -> bool:
        if not isinstance(name_or_alias, str):
            return False
        canonical = _ALIASES.get(name_or_alias.strip().lower())
        return canonical is not None and canonical in self.classes

    def index(self, name_or_alias: str) -> int:
        """Index of a class given by its canonical name or any alias (case-insensitive).

        Raises:
            UnknownLabelError: the name is no known class, or this space lacks that class.
        """
        canonical = canonical_name(name_or_alias)
        try:
            return self.classes.index(canonical)
        except ValueError:
            raise UnknownLabelError(
                f"class {canonical!r} (from {name_or_alias!r}) is not in label space {self.name!r}; "
                f"it holds {', '.join(self.classes)}"
            ) from None


ABAW8 = LabelSpace("abaw8", ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"))
BASIC7 = LabelSpace("basic7", ABAW8.classes[:7])
FERPLUS8 = LabelSpace("ferplus8", (*BASIC7.classes, "Contempt"))
COARSE5 = LabelSpace("coarse5", ("Neutral", "Happiness", "Surprise", "Other", "Negative"))
NEGATIVE4 = LabelSpace("negative4", ("Anger", "Disgust", "Fear", "Sadness"))

LABEL_SPACES: Mapping[str, LabelSpace] = {s.name: s for s in (ABAW8, BASIC7, FERPLUS8, COARSE5, NEGATIVE4)}


def get_label_space(name: str) -> LabelSpace:
    """The label space registered as ``name``.

    Raises:
        UnknownLabelError: an unknown name, with the closest valid one.
    """
    if name not in LABEL_SPACES:
        raise UnknownLabelError(
            f"unknown label space {name!r}{_closest(name, LABEL_SPACES)}; valid: {', '.join(LABEL_SPACES)}"
        )
    return LABEL_SPACES[name]


def canonical_name(alias: str) -> str:
    """Canonical class name of a native label name (``angry`` → ``Anger``), case-insensitive.

    Raises:
        UnknownLabelError: the name is not in the alias table; the message names the closest valid name.
    """
    key = alias.strip().lower() if isinstance(alias, str) else ""
    if key in _ALIASES:
        return _ALIASES[key]
    raise UnknownLabelError(
        f"unknown label name {alias!r}{_closest(key, _ALIASES)}; valid: {', '.join(sorted(_ALIASES))}"
    )


def project_name(name_or_alias: str, dst: LabelSpace) -> int:
    """Index in ``dst`` of a class name: the class itself, else its coarse class (via COARSE_OF), else -1.

    The coarse fallback lets fine-labelled data feed a coarse5 space (Anger → Negative); a class that has
    neither (Contempt in basic7, Other in basic7, Neutral in negative4) gives -1 = no label.

    Raises:
        UnknownLabelError: the name is no known class.
    """
    canonical = canonical_name(name_or_alias)
    if canonical in dst.classes:
        return dst.classes.index(canonical)
    coarse = COARSE_OF.get(canonical)
    if coarse is not None and coarse in dst.classes:
        return dst.classes.index(coarse)
    return -1


def map_indices(src: LabelSpace, dst: LabelSpace) -> npt.NDArray[np.int64]:
    """For each class of ``src``, its index in ``dst`` (rule of :func:`project_name`; -1 where dst lacks it).

    Returns:
        (len(src),) int64; ``map_indices(src, dst)[label]`` converts a src label (use -1 labels as a mask).
    """
    return np.array([project_name(c, dst) for c in src.classes], dtype=np.int64)


def names_to_space(names: Iterable[str], dst: LabelSpace) -> tuple[int, ...]:
    """Indices in ``dst`` of native class names given in native order (adapters' code → label table)."""
    return tuple(project_name(n, dst) for n in names)


def _closest(value: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def campaign_space(cfg: Config) -> LabelSpace:
    """The label space of the campaign: that of its labelled sources (they must agree)."""
    spaces = {cfg.source(s).label_space for s in cfg.campaign.labelled}
    if len(spaces) != 1:
        raise ConfigError(f"campaign.labelled sources must share one label space, got {sorted(spaces)}")
    return get_label_space(spaces.pop())
