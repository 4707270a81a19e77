"""The public-release adapters (Kaggle fer2013.csv, FERPlus, RAF-DB basic) on fixtures in their exact on-disk format,
built from real FER2013 faces; bad rows end in ingest's quarantine (decode_part, no Ray) or in a one-line error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from engine.config import IngestConfig, SourceConfig
from engine.errors import ConfigError, SourceFormatError, SourceRecordError
from engine.io import fs
from engine.layout import SourceLayout
from engine.sources import list_source_rows, locator_size, read_bytes
from engine.sources.base import SourceRow
from engine.sources.fer2013 import FER2013_CLASSES
from engine.sources.pixel_csv import N_EMOTIONS, pixel_csv_locator
from engine.stages.ingest import _listing_table, decode_part
from tests import fixtures as fx

KAGGLE_URL = (
    "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"
)


@pytest.fixture(autouse=True)
def _needs_fer(fer2013_dir: Path) -> None:
    """Every fixture here is built from the shared real FER2013 faces (skipped where they are absent)."""


def rows_of(fmt: str, path: Path, name: str, **kw: object) -> list[SourceRow]:
    return list(list_source_rows(SourceConfig(format=fmt, path=str(path), name=name, **kw)))


def view(rows: list[SourceRow]) -> list[tuple[str, str, str, int]]:
    return [(r.key, r.orig_path, r.split, r.label) for r in rows]


def face(folder: str, stem: str) -> fx.FerImage:
    """The real FER2013 image ``<folder>/<stem>.png`` (among the first 16 of its folder)."""
    return next(img for img in fx.fer_images(16, folder) if img.member == f"{folder}/{stem}.png")


def pixels_of(png: bytes) -> npt.NDArray[np.uint8]:
    img = Image.open(io.BytesIO(png))
    assert (img.mode, img.size) == ("L", (48, 48))
    return np.asarray(img)


def decode_statuses(rows: list[SourceRow], root: Path) -> dict[str, tuple[str, str]]:
    """key → (status, detail) after ingest's decode phase (``decode_part``: quarantine reasons are decided here)."""
    layout = SourceLayout(str(root), "src")
    fs.write_parquet(layout.listing_part(0), _listing_table(rows))
    decode_part(layout, 0, IngestConfig())
    table = fs.read_parquet(layout.decoded_part(0), columns=["key", "status", "detail"])
    return {r["key"]: (r["status"], r["detail"]) for r in table.to_pylist()}


# ---------------------------------------------------------------- Kaggle fer2013.csv

TRAIN_STEMS = ("fer0000000", "fer0000001", "fer0000002", "fer0000006", "fer0000007", "fer0000015")
"""Real FER2013 labels: angry, angry, fear, sad, happy, surprise."""


def _cells(img: fx.FerImage) -> str:
    return " ".join(str(v) for v in pixels_of(img.png).ravel())


def write_kaggle(folder: Path) -> tuple[Path, dict[str, fx.FerImage]]:
    """``folder/fer2013.csv`` with 8 good records of real faces and 5 bad ones, plus a blank line.

    Returns the CSV path and key → face of every good record.
    """
    train = [face("FER2013Train", s) for s in TRAIN_STEMS]
    val = [face("FER2013Valid", s) for s in ("fer0028638", "fer0028639")]
    test = [face("FER2013Test", "fer0032222")]
    p3 = _cells(face("FER2013Train", "fer0000003")).split()
    lines = [
        "emotion,pixels,Usage",
        f"{train[0].label},{_cells(train[0])},Training",  # 0
        f"{train[1].label},{_cells(train[1])},Training",  # 1
        f"4,{' '.join(p3[:-1])},Training",  # 2: 2,303 values
        f"{train[2].label},{_cells(train[2])},Training",  # 3
        "",
        f"7,{_cells(train[3])},Training",  # 4: emotion 7
        f"{train[3].label},{_cells(train[3])},Training",  # 5
        f"{train[4].label},{_cells(train[4])},Training",  # 6
        f"3,{' '.join(['256', *p3[1:]])},PublicTest",  # 7: out of range
        f"{val[0].label},{_cells(val[0])},PublicTest",  # 8
        f"{val[1].label},{' '.join([*p3[:5], '12.5', *p3[6:]])},PublicTest",  # 9: non-integer
        f"{val[1].label},{_cells(val[1])},PublicTest",  # 10
        f"{test[0].label},{_cells(test[0])},PrivateTest,extra",  # 11: 4 fields
        f"{test[0].label},{_cells(test[0])},PrivateTest",  # 12
        f"{train[5].label},{_cells(train[5])},Training",  # 13
    ]
    path = fx.write_file(folder / "fer2013.csv", "\n".join(lines) + "\n")
    good = {0: train[0], 1: train[1], 3: train[2], 5: train[3], 6: train[4], 8: val[0], 10: val[1], 12: test[0]}
    good[13] = train[5]
    return path, {f"kfer_fer2013_{i:07d}": img for i, img in good.items()}


def test_kaggle_rows_keys_splits_labels(tmp_path: Path) -> None:
    csv_path, _ = write_kaggle(tmp_path / "kaggle")
    assert len(FER2013_CLASSES) == N_EMOTIONS  # the decoder's code range is the adapter's class list
    rows = rows_of("kaggle_fer2013", csv_path.parent, "kfer")
    # basic7: Neutral 0, Anger 1, Disgust 2, Fear 3, Happiness 4, Sadness 5, Surprise 6; FER2013 code 7 → -1
    assert view(rows) == [
        ("kfer_fer2013_0000000", "fer2013.csv:2", "train", 1),
        ("kfer_fer2013_0000001", "fer2013.csv:3", "train", 1),
        ("kfer_fer2013_0000002", "fer2013.csv:4", "train", 5),
        ("kfer_fer2013_0000003", "fer2013.csv:5", "train", 3),
        ("kfer_fer2013_0000004", "fer2013.csv:7", "train", -1),
        ("kfer_fer2013_0000005", "fer2013.csv:8", "train", 5),
        ("kfer_fer2013_0000006", "fer2013.csv:9", "train", 4),
        ("kfer_fer2013_0000007", "fer2013.csv:10", "val", 4),
        ("kfer_fer2013_0000008", "fer2013.csv:11", "val", 1),
        ("kfer_fer2013_0000009", "fer2013.csv:12", "val", 2),
        ("kfer_fer2013_0000010", "fer2013.csv:13", "val", 2),
        ("kfer_fer2013_0000011", "fer2013.csv:14", "test", 0),
        ("kfer_fer2013_0000012", "fer2013.csv:15", "test", 0),
        ("kfer_fer2013_0000013", "fer2013.csv:16", "train", 6),
    ]
    assert view(rows_of("kaggle_fer2013", csv_path, "kfer")) == view(rows)  # the file itself, or its folder
    assert [r.label for r in rows_of("kaggle_fer2013", csv_path, "k", label_space="coarse5", limit=1)] == [4, 1, 0]
    lines = csv_path.read_bytes().split(b"\n")
    offset = sum(len(line) + 1 for line in lines[:2])
    assert (
        rows[1].locator
        == pixel_csv_locator(csv_path, offset, len(lines[2]) + 1)
        == f"pixelcsv://{csv_path}#{offset}:{len(lines[2]) + 1}"
    )
    assert locator_size(rows[1].locator) == len(lines[2]) + 1


def test_kaggle_bytes_are_pngs_of_the_exact_pixels(tmp_path: Path) -> None:
    csv_path, good = write_kaggle(tmp_path / "kaggle")
    rows = {r.key: r for r in rows_of("kaggle_fer2013", csv_path, "kfer")}
    assert len(good) == 9
    for key, img in good.items():
        png = read_bytes(rows[key].locator)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(pixels_of(png), pixels_of(img.png)), key
    assert read_bytes(rows["kfer_fer2013_0000000"].locator) == read_bytes(rows["kfer_fer2013_0000000"].locator)


def test_kaggle_bad_records_are_quarantined_with_reasons(tmp_path: Path) -> None:
    csv_path, good = write_kaggle(tmp_path / "kaggle")
    rows = rows_of("kaggle_fer2013", csv_path, "kfer")
    where = {r.key: f"(record at byte {r.locator.rsplit('#', 1)[1].split(':')[0]} of {csv_path})" for r in rows}
    problems = {
        "kfer_fer2013_0000002": "2303 pixel values, expected 2304 (48x48 grey)",
        "kfer_fer2013_0000004": "emotion '7' is not a FER2013 code 0..6",
        "kfer_fer2013_0000007": "pixel 0 is '256', not an integer 0..255",
        "kfer_fer2013_0000009": "pixel 5 is '12.5', not an integer 0..255",
        "kfer_fer2013_0000011": "4 fields, the header has 3",
    }
    for key, problem in problems.items():
        message = f"{problem} {where[key]}; fix or delete that row of the CSV"
        with pytest.raises(SourceRecordError) as exc:
            read_bytes(next(r.locator for r in rows if r.key == key))
        assert str(exc.value) == message
    statuses = decode_statuses(rows, tmp_path / "store")
    assert statuses == {
        **{key: ("ok", "") for key in good},
        **{
            key: ("bad_record", f"{p} {where[key]}; fix or delete that row of the CSV"[:200])
            for key, p in problems.items()
        },
    }


def test_kaggle_file_errors_name_the_file_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceFormatError) as exc:
        rows_of("kaggle_fer2013", missing, "fer")
    assert str(exc.value) == (
        f"source 'fer' (kaggle_fer2013): fer2013.csv not found at {missing}/fer2013.csv; download it from "
        f"{KAGGLE_URL} (fer2013.tar.gz holds fer2013/fer2013.csv) and set sources.fer.path to the file or its folder"
    )
    with pytest.raises(ConfigError, match=r"sources.fer.label_source: 'ferplus' needs FER\+ votes, which fer2013.csv"):
        rows_of("kaggle_fer2013", missing, "fer", label_source="ferplus")
    no_header = fx.write_file(tmp_path / "h" / "fer2013.csv", "0,1 2 3,Training\n")
    with pytest.raises(SourceFormatError, match=r"fer2013.csv:1: no header naming a 'pixels' column"):
        rows_of("kaggle_fer2013", no_header, "fer")
    img = face("FER2013Train", "fer0000000")
    cut = fx.write_file(tmp_path / "cut" / "fer2013.csv", f"emotion,pixels,Usage\n0,{_cells(img)},Training\n0,12 34")
    with pytest.raises(SourceFormatError) as exc:
        rows_of("kaggle_fer2013", cut, "fer")
    assert str(exc.value) == (
        f"{cut}:3: Usage '' (in a record of 2 fields) is not one of Training, PublicTest, PrivateTest; the file is "
        "cut off or edited: download fer2013.csv again, or delete that line"
    )


def test_kaggle_column_order_by_header_and_stale_locator(tmp_path: Path) -> None:
    a, b = face("FER2013Train", "fer0000006"), face("FER2013Test", "fer0032222")
    icml = fx.write_file(
        tmp_path / "icml_face_data.csv",
        f"emotion, Usage, pixels\n{a.label},Training,{_cells(a)}\n{b.label},PrivateTest,{_cells(b)}",  # no final \n
    )
    rows = rows_of("kaggle_fer2013", icml, "k")
    assert view(rows) == [
        ("k_icml-face-data_0000000_da811fc1", "icml_face_data.csv:2", "train", 5),
        ("k_icml-face-data_0000001_065c1acc", "icml_face_data.csv:3", "test", 0),
    ]
    assert np.array_equal(pixels_of(read_bytes(rows[1].locator)), pixels_of(b.png))
    icml.write_text(icml.read_text().replace(", Usage", ",Usage"))  # one byte shorter: every range moves
    with pytest.raises(SourceFormatError, match=r"no longer points at one whole record .* re-run the listing"):
        read_bytes(rows[0].locator)


# ---------------------------------------------------------------- FERPlus

NEW_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FERPLUS_FACES = (
    ("Training", "FER2013Train", "fer0000000"),  # votes 4,0,0,1,3,2: no majority
    ("Training", "FER2013Train", "fer0000001"),  # 6 neutral of 8 kept
    ("Training", "FER2013Train", "fer0000006"),  # 8 sadness of 10
    ("Training", "FER2013Train", "fer0000007"),  # 10 happiness
    ("Training", "FER2013Train", "fer0000015"),  # 6 surprise, 3 fear of 9 kept (a single anger vote dropped)
    ("PublicTest", "FER2013Valid", "fer0028638"),  # 4 neutral, 4 contempt: tie
    ("PublicTest", "FER2013Valid", "fer0028639"),  # 6 contempt of 8
    ("PrivateTest", "FER2013Test", "fer0032220"),  # 7 contempt of 9
    ("PrivateTest", "FER2013Test", "fer0032222"),  # 3 neutral, 5 sadness, 2 unknown: 5 of 10
)


def _votes(img: fx.FerImage) -> str:
    """The image's 10 FER+ votes as labels.csv holds them (fer2013new.csv order)."""
    with open(fx.FER_LABELS) as fh:
        line = next(line for line in fh if line.startswith(img.member + ","))
    return ",".join(line.strip().split(",")[-10:])


def write_ferplus(root: Path, images_under: str = "") -> dict[str, fx.FerImage]:
    """fer2013new.csv in ``root`` and the PNG folders in ``root/<images_under>``; returns key → face of listed rows.

    Extra rows: an empty Image name (NF 10), fer0000011.png named twice (the first row's PNG was overwritten by the
    second's, as Microsoft's generator does), and fer0000099.png whose PNG is missing.
    """
    lines, listed = [NEW_HEADER], {}
    overwritten = face("FER2013Train", "fer0000011")
    for i, (usage, folder, stem) in enumerate(FERPLUS_FACES):
        img = face(folder, stem)
        fx.write_file(root / images_under / img.member, img.png)
        lines.append(f"{usage},{stem}.png,{_votes(img)}")
        listed[f"fp_{folder}_{stem}"] = img
        if i == 1:
            lines.append("Training,,0,0,0,0,0,0,0,0,0,10")
            lines.append("Training,fer0000011.png,0,0,0,0,0,0,0,0,0,10")
        if i == 3:
            lines.append(f"Training,fer0000011.png,{_votes(overwritten)}")  # 10 neutral
            lines.append("Training,fer0000099.png,1,9,0,0,0,0,0,0,0,0")
    fx.write_file(root / images_under / overwritten.member, overwritten.png)
    fx.write_file(root / "fer2013new.csv", "\n".join(lines) + "\n")
    listed["fp_FER2013Train_fer0000011"] = overwritten
    return listed


FERPLUS_EXPECTED = [  # ferplus8: Neutral 0, Anger 1, Disgust 2, Fear 3, Happiness 4, Sadness 5, Surprise 6, Contempt 7
    ("fp_FER2013Train_fer0000000", "FER2013Train/fer0000000.png", "train", -1),
    ("fp_FER2013Train_fer0000001", "FER2013Train/fer0000001.png", "train", 0),
    ("fp_FER2013Train_fer0000006", "FER2013Train/fer0000006.png", "train", 5),
    ("fp_FER2013Train_fer0000007", "FER2013Train/fer0000007.png", "train", 4),
    ("fp_FER2013Train_fer0000011", "FER2013Train/fer0000011.png", "train", 0),
    ("fp_FER2013Train_fer0000099", "FER2013Train/fer0000099.png", "train", 4),
    ("fp_FER2013Train_fer0000015", "FER2013Train/fer0000015.png", "train", 6),
    ("fp_FER2013Valid_fer0028638", "FER2013Valid/fer0028638.png", "val", -1),
    ("fp_FER2013Valid_fer0028639", "FER2013Valid/fer0028639.png", "val", 7),
    ("fp_FER2013Test_fer0032220", "FER2013Test/fer0032220.png", "test", 7),
    ("fp_FER2013Test_fer0032222", "FER2013Test/fer0032222.png", "test", -1),
]


@pytest.mark.parametrize("images_under", ["", "data"])
def test_ferplus_rows_bytes_and_missing_png(
    tmp_path: Path, images_under: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "FERPlus"
    listed = write_ferplus(root, images_under)
    with caplog.at_level("INFO", logger="engine.sources.ferplus"):
        rows = rows_of("ferplus", root, "fp", label_space="ferplus8")
    prefix = f"{images_under}/" if images_under else ""
    assert view(rows) == [(k, prefix + p, s, lab) for k, p, s, lab in FERPLUS_EXPECTED]
    assert "source fp: skipped {'no_image_name': 1, 'overwritten': 1}" in caplog.messages
    for row in rows:
        if row.key in listed:
            assert row.locator == str(root / images_under / listed[row.key].member)
            assert np.array_equal(pixels_of(read_bytes(row.locator)), pixels_of(listed[row.key].png)), row.key
    basic7 = rows_of("ferplus", root / "fer2013new.csv", "fp")  # the CSV itself; basic7 has no Contempt
    assert [r.label for r in basic7] == [-1, 0, 5, 4, 0, 4, 6, -1, -1, -1, -1]
    missing = str(root / images_under / "FER2013Train/fer0000099.png")
    assert decode_statuses(rows, tmp_path / "store") == {
        **{key: ("ok", "") for key in listed},
        "fp_FER2013Train_fer0000099": (
            "unreadable",
            f"FileNotFoundError: [Errno 2] No such file or directory: {missing!r}"[:200],
        ),
    }


def test_ferplus_label_csv_folders(tmp_path: Path) -> None:
    """Without fer2013new.csv: the generator's per-folder label.csv (12 fields in the repository, 11 without box)."""
    root = tmp_path / "gen"
    for _usage, folder, stem in FERPLUS_FACES:
        fx.write_file(root / folder / f"{stem}.png", face(folder, stem).png)
    box = '"(0, 0, 48, 48)",'
    for folder, with_box in (("FER2013Train", True), ("FER2013Valid", False), ("FER2013Test", True)):
        lines = [f"{s}.png,{box if with_box else ''}{_votes(face(f, s))}" for _u, f, s in FERPLUS_FACES if f == folder]
        fx.write_file(root / folder / "label.csv", "\n".join(lines) + "\n")
    rows = rows_of("ferplus", root, "fp", label_space="ferplus8")
    assert view(rows) == [e for e in FERPLUS_EXPECTED if "0000011" not in e[0] and "0000099" not in e[0]]
    (root / "FER2013Test" / "label.csv").unlink()
    with pytest.raises(SourceFormatError, match=r"FER2013Test/label.csv not found, but .*FER2013Test exists"):
        rows_of("ferplus", root, "fp")


def test_ferplus_bad_annotation_lines_and_missing_release(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceFormatError) as exc:
        rows_of("ferplus", missing, "fp")
    assert str(exc.value) == (
        f"source 'fp' (ferplus): fer2013new.csv not found at {missing}/fer2013new.csv; download fer2013new.csv from "
        "https://github.com/microsoft/FERPlus, make the PNG folders with its src/generate_training_data.py -d "
        "<folder> -fer fer2013.csv -ferplus fer2013new.csv (fer2013.csv from Kaggle), and set sources.fp.path to "
        "the folder holding fer2013new.csv (PNG folders next to it or in data/) or to the -d folder"
    )
    root = tmp_path / "fp"
    fx.write_file(root / "fer2013new.csv", NEW_HEADER + "\n")
    with pytest.raises(SourceFormatError, match=r"no PNG folder FER2013Train, FER2013Valid, FER2013Test in .*/fp or"):
        rows_of("ferplus", root, "fp")
    (root / "FER2013Train").mkdir()
    for body, message in (
        ("Training,fer0000000.png,4,0,0,1,3,2,0,0,0", "fer2013new.csv:2: expected 12 comma-separated fields, got 11"),
        ("Train,fer0000000.png,4,0,0,1,3,2,0,0,0,0", "fer2013new.csv:2: unknown Usage 'Train'; expected one of"),
        ("Training,fer0000000.png,4,0,0,1,3,two,0,0,0,0", r"fer2013new.csv:2: non-integer vote count in \['4', "),
    ):
        fx.write_file(root / "fer2013new.csv", f"{NEW_HEADER}\n{body}\n")
        with pytest.raises(SourceFormatError, match=message):
            rows_of("ferplus", root, "fp")
    fx.write_file(root / "fer2013new.csv", "usage,neutral,happiness\n")
    with pytest.raises(SourceFormatError, match=r"fer2013new.csv:1: header 'usage,neutral,happiness' is not FERPlus"):
        rows_of("ferplus", root, "fp")


# ---------------------------------------------------------------- RAF-DB

RAF_LINES = (  # (list line, real face whose FER2013 label matches the RAF-DB label, or None: image missing)
    ("train_00001.jpg 5", ("FER2013Train", "fer0000006")),  # sadness
    ("train_00002.jpg 4", ("FER2013Train", "fer0000007")),  # happiness
    ("train_00003.jpg 1", ("FER2013Train", "fer0000015")),  # surprise
    ("train_00004.jpg 6", ("FER2013Train", "fer0000000")),  # anger
    ("train_00005.jpg 2", ("FER2013Train", "fer0000002")),  # fear
    ("train_00006.jpg 7", None),  # no image file
    ("test_0001.jpg 3", ("FER2013Valid", "fer0028639")),  # disgust
    ("test_0002.jpg 7", ("FER2013Test", "fer0032222")),  # neutral
)


def write_rafdb(root: Path, folder: str = "aligned") -> dict[str, bytes]:
    """RAF-DB basic layout: the list file and ``Image/<folder>/`` images; returns key → the face's PNG bytes.

    The image files hold the real faces' PNG bytes under RAF-DB's .jpg names (the adapter passes bytes through, so
    lossless content lets the pixels be compared exactly), except test_0002, a real JPEG.
    """
    fx.write_file(root / "EmoLabel/list_patition_label.txt", "\n".join(line for line, _ in RAF_LINES) + "\n\n")
    out = {}
    for line, src in RAF_LINES:
        stem = line.split(".")[0]
        if src is None:
            continue
        png = face(*src).png
        name = f"{stem}_aligned.jpg" if folder == "aligned" else f"{stem}.jpg"
        fx.write_file(root / "Image" / folder / name, fx.encode(png, ".jpg") if stem == "test_0002" else png)
        out[f"raf_{stem}"] = png
    return out


RAF_EXPECTED = [  # basic7: Neutral 0, Anger 1, Disgust 2, Fear 3, Happiness 4, Sadness 5, Surprise 6
    ("raf_train_00001", "train", 5),
    ("raf_train_00002", "train", 4),
    ("raf_train_00003", "train", 6),
    ("raf_train_00004", "train", 1),
    ("raf_train_00005", "train", 3),
    ("raf_train_00006", "train", 0),
    ("raf_test_0001", "test", 2),
    ("raf_test_0002", "test", 0),
]


def test_rafdb_aligned_rows_bytes_and_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "basic"
    faces = write_rafdb(root)
    write_rafdb(root, "original")  # both folders: aligned wins
    rows = rows_of("rafdb", root, "raf")
    assert [(r.key, r.split, r.label) for r in rows] == RAF_EXPECTED
    stems = [k.removeprefix("raf_") for k, _, _ in RAF_EXPECTED]
    assert [r.orig_path for r in rows] == [f"Image/aligned/{s}_aligned.jpg" for s in stems]
    assert [r.locator for r in rows] == [str(root / f"Image/aligned/{s}_aligned.jpg") for s in stems]
    for row in rows:
        if row.key in faces and row.key != "raf_test_0002":
            assert np.array_equal(pixels_of(read_bytes(row.locator)), pixels_of(faces[row.key])), row.key
    jpeg = read_bytes(rows[-1].locator)
    assert jpeg == fx.encode(faces["raf_test_0002"], ".jpg") and jpeg[:2] == b"\xff\xd8"
    assert [r.label for r in rows_of("rafdb", root, "raf", label_space="coarse5")] == [4, 1, 2, 4, 4, 0, 4, 0]
    missing = str(root / "Image/aligned/train_00006_aligned.jpg")
    assert decode_statuses(rows, tmp_path / "store") == {
        **{key: ("ok", "") for key in faces},
        "raf_train_00006": (
            "unreadable",
            f"FileNotFoundError: [Errno 2] No such file or directory: {missing!r}"[:200],
        ),
    }


def test_rafdb_original_folder_when_no_aligned(tmp_path: Path) -> None:
    root = tmp_path / "basic"
    faces = write_rafdb(root, "original")
    rows = rows_of("rafdb", root, "raf")
    assert [(r.key, r.orig_path, r.label) for r in rows][:2] == [
        ("raf_train_00001", "Image/original/train_00001.jpg", 5),
        ("raf_train_00002", "Image/original/train_00002.jpg", 4),
    ]
    assert np.array_equal(pixels_of(read_bytes(rows[0].locator)), pixels_of(faces["raf_train_00001"]))


def test_rafdb_bad_lines_and_missing_release(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceFormatError) as exc:
        rows_of("rafdb", missing, "raf")
    assert str(exc.value) == (
        f"source 'raf' (rafdb): RAF-DB EmoLabel/list_patition_label.txt not found at "
        f"{missing}/EmoLabel/list_patition_label.txt; request RAF-DB from http://www.whdeng.cn/RAF/model1.html, "
        "unpack its basic set and set sources.raf.path to the folder holding EmoLabel/ and Image/"
    )
    root = tmp_path / "basic"
    lst = fx.write_file(root / "EmoLabel/list_patition_label.txt", "train_00001.jpg 5\n")
    with pytest.raises(SourceFormatError, match=r"RAF-DB image folder \(Image/aligned/, else Image/original/\) not"):
        rows_of("rafdb", root, "raf")
    (root / "Image" / "aligned").mkdir(parents=True)
    for line, message in (
        (
            "train_00001.jpg 8",
            r"list_patition_label.txt:2: label '8' is outside 1..7; RAF-DB basic labels are 1-based",
        ),
        ("train_00001.jpg 0", r"label '0' is outside 1..7"),
        ("train_00001.jpg 5 x", r":2: expected '<image name> <label 1..7>', got 'train_00001.jpg 5 x'"),
        ("val_0001.jpg 5", r":2: image name 'val_0001.jpg' does not start with train_ or test_"),
    ):
        lst.write_text(f"test_0001.jpg 1\n{line}\n")
        with pytest.raises(SourceFormatError, match=message):
            rows_of("rafdb", root, "raf")
