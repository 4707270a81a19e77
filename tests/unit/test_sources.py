"""Source adapters on tiny real-format fixtures, and FER2013 on the real labels.csv + tar."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from engine.config import SourceConfig
from engine.errors import ConfigError, SourceFormatError, UnknownLabelError
from engine.sources import (
    adapter_names,
    get_adapter,
    list_source_rows,
    locator_size,
    make_key,
    path_key,
    read_bytes,
)
from engine.sources.base import SourceRow, tar_locator
from engine.sources.fer2013 import ferplus_majority
from tests import fixtures as fx


def rows_of(fmt: str, path: Path, **kw: object) -> list[SourceRow]:
    return list(list_source_rows(SourceConfig(format=fmt, path=str(path), name=kw.pop("name", fmt), **kw)))


def view(rows: list[SourceRow], *fields: str) -> list[tuple[object, ...]]:
    return [tuple(getattr(r, f) for f in fields) for r in rows]


# ---------------------------------------------------------------- keys, locators, registry


def test_make_key_keeps_clean_parts_and_hashes_rewritten_ones() -> None:
    assert make_key("fer2013", "FER2013Train", "fer0000000") == "fer2013_FER2013Train_fer0000000"
    assert make_key("aw", "1-30-1280x720", 7) == "aw_1-30-1280x720_7"
    assert make_key("expw", "angry_actor_104", 0) == "expw_angry-actor-104_0_3878eab6"
    assert make_key("my.src", "a") == "my-src_a"
    variants = {make_key("s", p) for p in ("a.b", "a-b", "a_b", "a b", "a/b", "a..b")}
    assert len(variants) == 6 and "s_a-b" in variants
    assert make_key("s", "a_b", "c") != make_key("s", "a", "b_c")
    assert path_key("src", "happy/img001.png") == "src_happy_img001_png"
    assert path_key("src", "happy/img001.jpg") != path_key("src", "happy/img001.png")


def test_keys_are_bounded_whatever_the_file_name_and_fit_a_ustar_member() -> None:
    import hashlib

    from engine.io.tars import tar_bytes
    from engine.sources.base import MAX_KEY_CHARS

    name = "a" * 251 + ".png"  # 255 bytes: the longest name ext4 allows
    deep = "/".join(f"level{i:02d}" for i in range(40)) + "/face.png"
    digest = hashlib.sha1(("a" * 251 + "/png").encode()).hexdigest()[:8]
    assert path_key("src", name) == "src_" + "a" * 82 + "_" + digest  # cut to 86 characters + the parts' hash
    assert len(path_key("src", deep)) == MAX_KEY_CHARS
    assert path_key("src", name.replace("a.png", "b.png")) != path_key("src", name)  # the hash tells them apart
    assert path_key("src", deep.replace("face", "other")) != path_key("src", deep)
    assert make_key("src", "x" * 91) == "src_" + "x" * 91  # 95 characters: kept as it is (keys from before stay)
    for key in (path_key("src", name), path_key("src", deep), path_key("src", "caf\udce9_" + "b" * 240 + ".jpg")):
        assert len(key) <= MAX_KEY_CHARS
        tar_bytes([(f"{key}.json", b"{}"), (f"{key}.png", b"x")])  # USTAR: raises when a member name is too long


def test_read_bytes_plain_file_and_tar_range(tmp_path: Path) -> None:
    plain = fx.write_file(tmp_path / "a.bin", b"hello")
    assert read_bytes(str(plain)) == b"hello"
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in (("x/one.png", b"\x89PNG one"), ("x/two.png", b"two-bytes" * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with tarfile.open(tar) as tf:
        two = tf.getmember("x/two.png")
    assert read_bytes(tar_locator(tar, two.offset_data, two.size)) == b"two-bytes" * 100
    assert locator_size(tar_locator(tar, two.offset_data, two.size)) == 900 and locator_size(str(plain)) == 5
    with pytest.raises(SourceFormatError, match="malformed tar locator"):
        read_bytes(f"tar://{tar}#12")
    with pytest.raises(SourceFormatError, match="ends after"):
        read_bytes(tar_locator(tar, tar.stat().st_size - 10, 100))
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.png"))


def test_registry_lists_formats_and_suggests_on_typo(tmp_path: Path) -> None:
    assert adapter_names() == (
        "affectnet",
        "affwild2",
        "csv_list",
        "diffusionfer",
        "expw",
        "fer2013",
        "ferplus",
        "flat_folder",
        "image_folder",
        "kaggle_fer2013",
        "mindface",
        "rafdb",
    )
    with pytest.raises(ConfigError, match=r"unknown format 'fer2031'; did you mean 'fer2013'\?"):
        get_adapter(SourceConfig(format="fer2031", path=str(tmp_path), name="x"))
    with pytest.raises(UnknownLabelError, match="did you mean 'basic7'"):
        get_adapter(SourceConfig(format="flat_folder", path=str(tmp_path), label_space="basic6"))


# ---------------------------------------------------------------- adapters on fixtures


def test_fer2013_fixture_limit_and_locators(tmp_path: Path, fer2013_dir: Path) -> None:
    root = fx.write_fer2013(tmp_path / "fer", n_per_split=3)
    rows = rows_of("fer2013", root, name="fer", limit=2)
    assert view(rows, "key", "orig_path", "split", "label") == [
        ("fer_FER2013Train_fer0000000", "FER2013Train/fer0000000.png", "train", 1),
        ("fer_FER2013Train_fer0000001", "FER2013Train/fer0000001.png", "train", 1),
        ("fer_FER2013Valid_fer0028638", "FER2013Valid/fer0028638.png", "val", 1),
        ("fer_FER2013Valid_fer0028639", "FER2013Valid/fer0028639.png", "val", 2),
        ("fer_FER2013Test_fer0032220", "FER2013Test/fer0032220.png", "test", 1),
        ("fer_FER2013Test_fer0032222", "FER2013Test/fer0032222.png", "test", 0),
    ]
    tar = root / "fer2013_ferplus_png.tar"
    assert rows[0].locator == f"tar://{tar}#512:2420" and rows[1].locator == f"tar://{tar}#3584:2420"
    assert read_bytes(rows[3].locator) == fx.fer_images(2, "FER2013Valid")[1].png
    # FER+ votes of these rows (labels.csv), single votes dropped, winner needs > half of the rest:
    # 4,-,-,-,3,2 -> -1 | 6 of 8 neutral | 5 of 8 neutral | 4,4 tie -> -1 | 2 disgust, 6 contempt -> contempt
    # 7 of 9 neutral | 2 anger, 7 contempt -> contempt | 3 neutral, 5 sad, 2 unknown: 5 of 10 -> -1 | 6 of 8 neutral
    plus = rows_of("fer2013", root, label_source="ferplus", label_space="ferplus8")
    assert [r.label for r in plus] == [-1, 0, 0, -1, 7, 0, 7, -1, 0]
    plus7 = rows_of("fer2013", root, label_source="ferplus")  # basic7 has no Contempt
    assert [r.label for r in plus7] == [-1, 0, 0, -1, -1, 0, -1, -1, 0]


def test_image_folder_class_layout(tmp_path: Path) -> None:
    root = fx.write_image_folder(tmp_path / "if")
    rows = rows_of("image_folder", root, name="faces", split="val")
    assert view(rows, "key", "orig_path", "split", "label") == [
        ("faces_Happy_x-1_png_b9d16c8b", "Happy/x_1.png", "val", 4),
        ("faces_angry_fer0000000_png", "angry/fer0000000.png", "val", 1),
        ("faces_angry_fer0000001_jpg", "angry/fer0000001.jpg", "val", 1),
        ("faces_contempt_c_webp", "contempt/c.webp", "val", -1),
        ("faces_surprised_sub_deep_bmp", "surprised/sub/deep.bmp", "val", 6),
    ]
    assert rows[1].locator == str(root / "angry/fer0000000.png") and read_bytes(rows[1].locator) == fx.face(0)
    assert [r.label for r in rows_of("image_folder", root, label_space="ferplus8")] == [4, 1, 1, 7, 6]
    assert {(r.box, r.group, r.frame, r.valence) for r in rows} == {(None, None, None, None)}


def test_image_folder_split_layout_and_errors(tmp_path: Path) -> None:
    root = fx.write_image_folder_splits(tmp_path / "ifs")
    assert view(rows_of("image_folder", root), "key", "split", "label") == [
        ("image_folder_Validation_fear_c_png", "val", 3),
        ("image_folder_train_happy_a_png", "train", 4),
        ("image_folder_train_sad_b_jpg", "train", 5),
        ("image_folder_unlabeled_d_png", "unlabelled", -1),
        ("image_folder_unlabeled_neutral_e_png", "unlabelled", 0),
    ]
    fx.write_images(root, ["happy/z.png"])
    with pytest.raises(SourceFormatError, match=r"mixes split folders .* with other folders \['happy'\]"):
        rows_of("image_folder", root)
    fx.write_images(tmp_path / "bad", ["misc/z.png"])
    with pytest.raises(UnknownLabelError, match=r"class folder .*misc: unknown label name 'misc'"):
        rows_of("image_folder", tmp_path / "bad")


def test_flat_folder(tmp_path: Path) -> None:
    root = fx.write_flat_folder(tmp_path / "ff")
    rows = rows_of("flat_folder", root, name="pool", split="unlabelled")
    assert view(rows, "key", "orig_path", "locator", "split", "label") == [
        ("pool_a_png", "a.png", str(root / "a.png"), "unlabelled", -1),
        ("pool_b_c_jpg", "b/c.jpg", str(root / "b/c.jpg"), "unlabelled", -1),
        ("pool_b_d_e_webp", "b/d/e.webp", str(root / "b/d/e.webp"), "unlabelled", -1),
    ]


@pytest.mark.parametrize("header", [True, False])
def test_csv_list(tmp_path: Path, header: bool) -> None:
    csv_path = fx.write_csv_list(tmp_path / "c", header=header)
    rows = rows_of("csv_list", csv_path)
    assert view(rows, "key", "orig_path", "locator", "split", "label") == [
        ("csv_list_imgs_a_png", "imgs/a.png", str(tmp_path / "c/imgs/a.png"), "train", 4),
        ("csv_list_imgs_b_jpg", "imgs/b.jpg", str(tmp_path / "c/imgs/b.jpg"), "val", 3),
        ("csv_list_imgs_sub_c_png", "imgs/sub/c.png", str(tmp_path / "c/imgs/sub/c.png"), "train", -1),
        ("csv_list_other_d_png", "other/d.png", str(tmp_path / "c/other/d.png"), "test", -1),
    ]
    assert [r.label for r in rows_of("csv_list", csv_path, label_space="ferplus8")] == [4, 3, -1, 7]


def test_csv_list_rejects_bad_rows(tmp_path: Path) -> None:
    cases = {
        "a.png,9\n": "label index 9 is outside label space 'basic7'",
        "a.png,smile\n": "unknown label name 'smile'",
        "a.png,happy,holdout\n": "unknown split 'holdout'",
        "a.png,happy\nb.png,sad\na.png,sad\n": "key 'csv_list_a_png' listed twice",
        "a.png\n": "expected 2..3 comma-separated fields, got 1",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = fx.write_file(tmp_path / f"{i}.csv", text)
        with pytest.raises((SourceFormatError, UnknownLabelError), match=message):
            rows_of("csv_list", path)


def test_expw(tmp_path: Path) -> None:
    root = fx.write_expw(tmp_path / "expw")
    rows = rows_of("expw", root, split="unlabelled")
    scene = str(root / "image/origin/angry_actor_104.jpg")
    assert view(rows, "key", "orig_path", "locator", "split", "label", "box") == [
        (
            "expw_angry-actor-104_0_3878eab6",
            "image/origin/angry_actor_104.jpg",
            scene,
            "unlabelled",
            1,
            (10, 20, 58, 68),
        ),
        (
            "expw_angry-actor-104_1_24eae924",
            "image/origin/angry_actor_104.jpg",
            scene,
            "unlabelled",
            4,
            (70, 30, 118, 78),
        ),
        (
            "expw_happy-girl_0_553ef75f",
            "image/origin/happy.girl.jpg",
            str(root / "image/origin/happy.girl.jpg"),
            "unlabelled",
            0,
            (6, 5, 54, 53),
        ),
    ]
    # the box crops exactly the pasted face (JPEG noise only)
    img = Image.open(io.BytesIO(read_bytes(rows[1].locator))).crop(rows[1].box)
    ref = Image.open(io.BytesIO(fx.face(1)))
    diff = [abs(a - b) for a, b in zip(img.getdata(), ref.getdata(), strict=True)]
    assert img.size == (48, 48) and sum(diff) / len(diff) < 3


def test_affectnet(tmp_path: Path) -> None:
    root = fx.write_affectnet(tmp_path / "an")
    rows = rows_of("affectnet", root)
    long_id = "689_737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca"
    assert view(rows, "key", "split", "label", "box", "valence", "arousal") == [
        (f"affectnet_{long_id}", "train", 4, (134, 134, 182, 182), 0.5, 0.25),
        ("affectnet_392_c4db2f9b7e4b", "train", -1, (20, 20, 68, 68), -0.5, 0.75),
        ("affectnet_993_02e06ee5", "train", -1, (22, 22, 70, 70), None, None),
        (f"affectnet_{long_id}_2", "train", 6, (10, 10, 58, 58), 0.1, 0.2),
        ("affectnet_993_02e06ee5_2", "val", 1, (5, 6, 53, 54), -0.9, 0.8),
    ]
    assert rows[1].orig_path == "Manually_Annotated_Images/392/c4db2f9b7e4b.jpg"
    assert rows[1].locator == str(root / "Manually_Annotated_Images/392/c4db2f9b7e4b.jpg")
    assert [r.label for r in rows_of("affectnet", root, label_space="ferplus8")] == [4, 7, -1, 6, 1]


def test_diffusionfer(tmp_path: Path) -> None:
    root = fx.write_diffusionfer(tmp_path / "d")
    rows = rows_of("diffusionfer", root, name="dfer")
    assert view(rows, "key", "orig_path", "split", "label", "valence", "arousal") == [
        (
            "dfer_neutral_aksjlkjl-0_png_59276bec",
            "DiffusionEmotion_S/cropped/neutral/aksjlkjl_0.png",
            "train",
            0,
            -0.1,
            0.1,
        ),
        (
            "dfer_angry_bcdefghi-6_png_98a2bb53",
            "DiffusionEmotion_S/cropped/angry/bcdefghi_6.png",
            "train",
            6,
            -0.6,
            0.7,
        ),
        ("dfer_happy_kwblojky_png_235bc293", "DiffusionEmotion_S/cropped/happy/kwblojky_-.png", "train", 4, 0.7, 0.4),
    ]
    assert read_bytes(rows[2].locator) == fx.face(6)
    # pointing at DiffusionEmotion_S itself gives the same rows
    inner = rows_of("diffusionfer", root / "DiffusionEmotion_S", name="dfer")
    assert [r.key for r in inner] == [r.key for r in rows] and inner[0].orig_path == "cropped/neutral/aksjlkjl_0.png"


@pytest.mark.parametrize("edition", ["2020", "3rd", "5th", "6th"])
def test_affwild2_editions(tmp_path: Path, edition: str) -> None:
    root = fx.write_affwild2(tmp_path / "aw", edition)
    rows = rows_of("affwild2", root, name="aw", label_space="abaw8")
    assert view(rows, "key", "orig_path", "split", "label", "group", "frame") == [
        ("aw_1-30-1280x720_00001", "cropped_aligned/1-30-1280x720/00001.jpg", "train", 0, "1-30-1280x720", 1),
        ("aw_1-30-1280x720_00002", "cropped_aligned/1-30-1280x720/00002.jpg", "train", 4, "1-30-1280x720", 2),
        ("aw_1-30-1280x720_00003", "cropped_aligned/1-30-1280x720/00003.jpg", "train", -1, "1-30-1280x720", 3),
        ("aw_1-30-1280x720_00005", "cropped_aligned/1-30-1280x720/00005.jpg", "train", 2, "1-30-1280x720", 5),
        (
            "aw_video10-1-left_00001_1b40eaad",
            "cropped_aligned/video10_1_left/00001.jpg",
            "val",
            5,
            "video10_1_left",
            1,
        ),
        (
            "aw_video10-1-left_00002_06890995",
            "cropped_aligned/video10_1_left/00002.jpg",
            "val",
            -1,
            "video10_1_left",
            2,
        ),
    ]
    assert read_bytes(rows[4].locator) == fx.encode(fx.face(4), ".jpg")
    # basic7 has no Other: frame 4 of the train video (label 7) becomes -1
    assert [r.label for r in rows_of("affwild2", root)] == [0, 4, -1, 2, 5, -1]


def test_affwild2_layout_errors(tmp_path: Path) -> None:
    root = fx.write_affwild2(tmp_path / "aw", "6th")
    fx.write_affwild2(root / "copy", "3rd")
    with pytest.raises(SourceFormatError, match="need exactly one EXPR annotation folder"):
        rows_of("affwild2", root)
    bad = fx.write_affwild2(tmp_path / "bad", "5th")
    fx.write_file(bad / "EXPR_Classification_Challenge/Train_Set/1-30-1280x720.txt", "header\n0\n")
    with pytest.raises(SourceFormatError, match="header 'header' must list the class names"):
        rows_of("affwild2", bad)
    fx.write_file(bad / "EXPR_Classification_Challenge/Train_Set/1-30-1280x720.txt", fx.AFFWILD2_HEADER + "\n8\n")
    with pytest.raises(SourceFormatError, match=r"1-30-1280x720.txt:2: label 8 outside -1..7"):
        rows_of("affwild2", bad)


def test_mindface(tmp_path: Path) -> None:
    root = fx.write_mindface(tmp_path / "data")
    rows = rows_of("mindface", root, name="mf", label_space="abaw8")
    assert view(rows, "key", "orig_path", "split", "label") == [
        ("mf_train_a_jpg", "label_train_img/a.jpg", "train", 4),
        ("mf_train_b_jpg", "label_train_img/b.jpg", "train", 7),
        ("mf_unlabelled_u1_jpg", "unlabel_train_img/u1.jpg", "unlabelled", -1),
        ("mf_unlabelled_batch2_u2_png", "unlabel_train_img/batch2/u2.png", "unlabelled", -1),
        ("mf_val_v1_jpg", "val_img/v1.jpg", "val", 2),
        ("mf_test_t1_jpg", "test_img/t1.jpg", "test", -1),
    ]
    assert rows[1].locator == str(root / "label_train_img/b.jpg")
    with pytest.raises(SourceFormatError, match="label index 7 is outside label space 'basic7'"):
        rows_of("mindface", root)


# ---------------------------------------------------------------- FER+ majority and the real FER2013


def test_ferplus_majority_follows_the_official_reader() -> None:
    assert ferplus_majority([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]) == 0  # 6 of the 8 votes left after single votes drop
    assert ferplus_majority([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]) == -1  # 4 of 9: no majority
    assert ferplus_majority([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) == -1  # tie
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 0, 10, 0, 0]) == 7  # contempt
    assert ferplus_majority([1, 0, 0, 0, 0, 0, 0, 0, 9, 0]) == -1  # unknown wins
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]) == -1  # not a face
    assert ferplus_majority([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) == -1  # only single votes


@pytest.fixture(scope="module")
def fer_rows(fer2013_dir: Path) -> dict[str, list[SourceRow]]:
    return {
        "fer2013": rows_of("fer2013", fer2013_dir, name="fer"),
        "ferplus": rows_of("fer2013", fer2013_dir, name="fer", label_source="ferplus", label_space="ferplus8"),
    }


def _counts(rows: list[SourceRow], space: tuple[str, ...]) -> dict[str, dict[str, int]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in rows:
        counts[r.split][space[r.label] if r.label >= 0 else "-1"] += 1
    return {split: dict(sorted(c.items())) for split, c in counts.items()}


def test_fer2013_real_split_and_fer2013_label_counts(fer_rows: dict[str, list[SourceRow]]) -> None:
    rows = fer_rows["fer2013"]
    assert collections.Counter(r.split for r in rows) == {"train": 28558, "val": 3579, "test": 3573}
    names = ("neutral", "angry", "disgust", "fear", "happy", "sad", "surprise")  # basic7 order
    # README table "Original FER2013 label"
    assert _counts(rows, names) == {
        "train": dict(
            sorted(
                {
                    "angry": 3942,
                    "disgust": 431,
                    "fear": 4039,
                    "happy": 7184,
                    "sad": 4776,
                    "surprise": 3127,
                    "neutral": 4921,
                    "-1": 138,
                }.items()
            )
        ),
        "val": dict(
            sorted(
                {
                    "angry": 465,
                    "disgust": 55,
                    "fear": 491,
                    "happy": 890,
                    "sad": 648,
                    "surprise": 411,
                    "neutral": 604,
                    "-1": 15,
                }.items()
            )
        ),
        "test": dict(
            sorted(
                {
                    "angry": 486,
                    "disgust": 55,
                    "fear": 523,
                    "happy": 874,
                    "sad": 585,
                    "surprise": 410,
                    "neutral": 623,
                    "-1": 17,
                }.items()
            )
        ),
    }
    assert len({r.key for r in rows}) == 35710
    assert rows[0].key == "fer_FER2013Train_fer0000000" and rows[-1].split == "test"


def test_fer2013_real_ferplus_majority_counts(fer_rows: dict[str, list[SourceRow]]) -> None:
    names = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "contempt")  # ferplus8
    # official FER+ majority rule; each class count is below the README's arg-max count of that class
    assert _counts(fer_rows["ferplus"], names) == {
        "train": dict(
            sorted(
                {
                    "neutral": 8733,
                    "happiness": 7284,
                    "surprise": 3136,
                    "sadness": 3022,
                    "anger": 2098,
                    "disgust": 116,
                    "fear": 536,
                    "contempt": 120,
                    "-1": 3513,
                }.items()
            )
        ),
        "val": dict(
            sorted(
                {
                    "neutral": 1180,
                    "happiness": 862,
                    "surprise": 411,
                    "sadness": 348,
                    "anger": 289,
                    "disgust": 25,
                    "fear": 60,
                    "contempt": 16,
                    "-1": 388,
                }.items()
            )
        ),
        "test": dict(
            sorted(
                {
                    "neutral": 1083,
                    "happiness": 892,
                    "surprise": 394,
                    "sadness": 382,
                    "anger": 269,
                    "disgust": 16,
                    "fear": 86,
                    "contempt": 15,
                    "-1": 436,
                }.items()
            )
        ),
    }


def test_fer2013_real_locators_equal_tar_members(fer_rows: dict[str, list[SourceRow]], fer2013_dir: Path) -> None:
    rows = fer_rows["fer2013"]
    picked = [rows[0], rows[28558], rows[-1]]
    ranges = fx.tar_member_ranges([r.orig_path for r in picked])  # raw USTAR header walk, not tarfile
    tar = fer2013_dir / "fer2013_ferplus_png.tar"
    with open(tar, "rb") as fh:
        for row in picked:
            offset, size = ranges[row.orig_path]
            fh.seek(offset)
            assert row.locator == tar_locator(tar, offset, size) and read_bytes(row.locator) == fh.read(size)
    assert picked[1].orig_path.startswith("FER2013Valid/") and picked[1].split == "val"


# ---------------------------------------------------------------- bad inputs for ingest


def test_make_bad_inputs(tmp_path: Path, fer2013_dir: Path) -> None:
    bad = fx.make_bad_inputs(tmp_path)
    assert sorted(bad) == ["empty", "not_image", "too_large", "too_small", "truncated"]
    assert bad["empty"].stat().st_size == 0
    assert bad["truncated"].read_bytes() == fx.face(0)[:1210]
    assert Image.open(bad["too_small"]).size == (1, 1)
    bomb = bad["too_large"].read_bytes()
    assert int.from_bytes(bomb[16:20], "big") == 30000 and int.from_bytes(bomb[20:24], "big") == 30000
    assert int.from_bytes(bomb[29:33], "big") == zlib.crc32(bomb[12:29])
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bad["too_large"])
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(bad["not_image"])
    with pytest.raises(OSError):
        Image.open(bad["truncated"]).load()


@pytest.mark.parametrize("fmt", sorted(adapter_names()))
def test_a_missing_dataset_is_one_line_naming_what_to_get_and_where_to_point(tmp_path: Path, fmt: str) -> None:
    from engine.sources.base import get_adapter

    cfg = SourceConfig(format=fmt, path=str(tmp_path / "nowhere"), name="mine")
    with pytest.raises(SourceFormatError) as err:
        list(list_source_rows(cfg))
    msg = str(err.value)
    hint = type(get_adapter(cfg)).download_hint.format(name="mine")
    assert "\n" not in msg and msg.startswith(f"source 'mine' ({fmt}): ") and " not found at " in msg
    assert "sources.mine.path" in hint and msg.endswith(hint), msg


def test_a_file_name_that_is_not_utf8_gets_a_key_from_its_bytes_and_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    face = fx.face(1)
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 é: not UTF-8
    with open(raw, "wb") as f:
        f.write(face)
    (folder / "cafe.png").write_bytes(fx.face(2))
    rows = rows_of("flat_folder", folder, split="unlabelled")
    assert [r.orig_path for r in rows] == ["cafe.png", "caf\\xe9.png"]
    assert rows[0].key == "flat_folder_cafe_png"
    assert rows[1].key == "flat_folder_caf_png_" + hashlib.sha1(b"caf\xe9/png").hexdigest()[:8]
    assert rows[1].locator == "fsbytes://" + os.fsencode(folder).decode() + "/caf%E9.png"
    assert read_bytes(rows[1].locator) == face
    assert locator_size(rows[1].locator) == len(face)
    rows[1].locator.encode("utf-8")  # fits a parquet string column


def test_gif_and_tiff_are_listed_and_other_files_counted_in_the_log(tmp_path: Path, caplog) -> None:
    import logging

    import numpy as np

    from engine.imaging import decode_pixels

    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.asarray(Image.open(io.BytesIO(fx.face(0))).convert("L"))
    for suffix, fmt in ((".gif", "GIF"), (".tif", "TIFF")):
        Image.fromarray(pixels).save(folder / f"a{suffix}", format=fmt)
    for name in ("notes.txt", "b.txt", "README", "clip.mp4"):
        (folder / name).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="engine.sources.base"):
        rows = rows_of("flat_folder", folder, name="mine", split="unlabelled")
    assert [r.orig_path for r in rows] == ["a.gif", "a.tif"]
    for r in rows:  # lossless: the same grey pixels come back (a GIF as a palette image, converted)
        got = decode_pixels(read_bytes(r.locator))
        assert np.array_equal(got if got.ndim == 2 else got[..., 0], pixels)
    assert [m for m in caplog.messages if "skipped" in m] == [
        f"source mine {folder}: 4 file(s) skipped, not an image by suffix: (no suffix) 1, .mp4 1, .txt 2"
    ]


def test_paths_leading_outside_the_source_are_refused_unless_followed(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(fx.face(0))
    (folder / "own.png").write_bytes(fx.face(1))
    (folder / "inside.png").symlink_to(folder / "own.png")  # a link within the folder is fine
    (folder / "out.png").symlink_to(elsewhere / "secret.png")
    rows = rows_of("flat_folder", folder, name="mine", split="unlabelled")
    assert view(rows, "orig_path", "reject") == [
        ("inside.png", None),
        (
            "out.png",
            f"outside_root: out.png resolves to {elsewhere}/secret.png, outside {folder}; "
            "set sources.mine.follow_outside=true to ingest it",
        ),
        ("own.png", None),
    ]
    followed = rows_of("flat_folder", folder, name="mine", split="unlabelled", follow_outside=True)
    assert [r.reject for r in followed] == [None, None, None]
    # A CSV list: absolute paths are documented and read; a relative one may not climb out of the CSV's folder.
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "a.png").write_bytes(fx.face(2))
    (lists / "l.csv").write_text(f"path,label\na.png,happy\n../elsewhere/secret.png,sad\n{elsewhere}/secret.png,sad\n")
    got = rows_of("csv_list", lists / "l.csv", name="csv")
    assert [(r.orig_path, (r.reject or "").split(":")[0]) for r in got] == [
        ("a.png", ""),
        ("../elsewhere/secret.png", "outside_root"),
        (f"{elsewhere}/secret.png", ""),
    ]
