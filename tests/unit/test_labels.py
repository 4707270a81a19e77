"""Label spaces, aliases, coarse mapping and index conversion."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.errors import UnknownLabelError
from engine.labels import (
    ABAW8,
    BASIC7,
    CANONICAL_NAMES,
    COARSE5,
    COARSE_OF,
    FERPLUS8,
    LABEL_SPACES,
    NEGATIVE4,
    LabelSpace,
    canonical_name,
    get_label_space,
    map_indices,
    names_to_space,
    project_name,
)


def test_spaces_hold_the_documented_classes_in_order() -> None:
    assert ABAW8.classes == ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
    assert BASIC7.classes == ABAW8.classes[:7]
    assert FERPLUS8.classes == (*BASIC7.classes, "Contempt")
    assert COARSE5.classes == ("Neutral", "Happiness", "Surprise", "Other", "Negative")
    assert NEGATIVE4.classes == ("Anger", "Disgust", "Fear", "Sadness")
    assert [len(s) for s in (ABAW8, BASIC7, FERPLUS8, COARSE5, NEGATIVE4)] == [8, 7, 8, 5, 4]
    assert list(LABEL_SPACES) == ["abaw8", "basic7", "ferplus8", "coarse5", "negative4"]
    assert get_label_space("ferplus8") is FERPLUS8


def test_index_accepts_aliases_case_insensitively() -> None:
    assert [BASIC7.index(n) for n in ("neutral", "ANGRY", "disgusted", "Fearful", "happy", "sad", "Surprised")] == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert ABAW8.index(" other ") == 7
    assert FERPLUS8.index("contempt") == 7
    assert COARSE5.index("negative") == 4
    assert "happy" in BASIC7 and "contempt" not in BASIC7 and 3 not in BASIC7


def test_canonical_name_maps_every_native_spelling() -> None:
    native = {
        "angry": "Anger",
        "anger": "Anger",
        "happy": "Happiness",
        "happiness": "Happiness",
        "sad": "Sadness",
        "sadness": "Sadness",
        "surprise": "Surprise",
        "surprised": "Surprise",
        "fear": "Fear",
        "fearful": "Fear",
        "disgust": "Disgust",
        "disgusted": "Disgust",
        "neutral": "Neutral",
        "contempt": "Contempt",
        "other": "Other",
        "Happy": "Happiness",
        "NEUTRAL": "Neutral",
    }
    assert {k: canonical_name(k) for k in native} == native
    assert {canonical_name(c) for c in CANONICAL_NAMES} == set(CANONICAL_NAMES)


def test_unknown_name_names_value_closest_and_valid_list() -> None:
    with pytest.raises(UnknownLabelError) as err:
        canonical_name("hapy")
    msg = str(err.value)
    assert "'hapy'" in msg and "did you mean 'happy'?" in msg and "valid: " in msg and "surprised" in msg


def test_space_lacking_a_class_raises_with_its_classes() -> None:
    with pytest.raises(UnknownLabelError, match=r"'Contempt' \(from 'contempt'\) is not in label space 'basic7'"):
        BASIC7.index("contempt")


def test_unknown_space_suggests_closest() -> None:
    with pytest.raises(UnknownLabelError, match=r"unknown label space 'basic8'; did you mean 'basic7'\?"):
        get_label_space("basic8")


def test_label_space_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASIC7.name = "x"  # type: ignore[misc]
    with pytest.raises(UnknownLabelError, match="'happy' is not a canonical class name"):
        LabelSpace("bad", ("Neutral", "happy"))
    with pytest.raises(UnknownLabelError, match="repeats a class"):
        LabelSpace("bad", ("Neutral", "Neutral"))


def test_map_indices_exact() -> None:
    cases = {
        (ABAW8, BASIC7): [0, 1, 2, 3, 4, 5, 6, -1],
        (BASIC7, ABAW8): [0, 1, 2, 3, 4, 5, 6],
        (FERPLUS8, BASIC7): [0, 1, 2, 3, 4, 5, 6, -1],
        (FERPLUS8, ABAW8): [0, 1, 2, 3, 4, 5, 6, -1],
        (ABAW8, COARSE5): [0, 4, 4, 4, 1, 4, 2, 3],
        (FERPLUS8, COARSE5): [0, 4, 4, 4, 1, 4, 2, -1],
        (ABAW8, NEGATIVE4): [-1, 0, 1, 2, -1, 3, -1, -1],
        (COARSE5, ABAW8): [0, 4, 6, 7, -1],
    }
    for (src, dst), want in cases.items():
        got = map_indices(src, dst)
        assert got.dtype == np.int64 and got.tolist() == want, (src.name, dst.name)
    labels = np.array([1, 4, 7, -1])
    mapped = np.where(labels >= 0, map_indices(ABAW8, COARSE5)[labels], -1)
    assert mapped.tolist() == [4, 1, 3, -1]


def test_coarse_of_matches_coarse5_and_negative4() -> None:
    assert {COARSE_OF[c] for c in ABAW8.classes} == set(COARSE5.classes)
    assert tuple(c for c in ABAW8.classes if COARSE_OF[c] == "Negative") == NEGATIVE4.classes
    assert all(COARSE_OF[c] == c for c in COARSE5.classes)
    assert "Contempt" not in COARSE_OF


def test_project_name_and_native_tables() -> None:
    assert project_name("angry", COARSE5) == 4
    assert project_name("contempt", BASIC7) == -1
    assert project_name("neutral", NEGATIVE4) == -1
    expw = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert names_to_space(expw, BASIC7) == (1, 2, 3, 4, 5, 6, 0)
    assert names_to_space(expw, COARSE5) == (4, 4, 4, 1, 4, 2, 0)
    with pytest.raises(UnknownLabelError, match="'smile'"):
        names_to_space(("smile",), BASIC7)
