"""Datasets in every supported on-disk layout, built from real FER2013 PNGs (the shared tar and labels.csv): tiny
ones for the tests, the seed-method recipes' data (conf/recipes/*.yaml) and bad image files for the hostile-input
probes. The recipes' data is built with ``python bench/fer_layouts.py NAME OUT_DIR``."""

from __future__ import annotations

import csv
import functools
import io
import os
import random
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

FER_DIR = Path(os.environ.get("FER2013_DIR", "/work/shared/data/fer2013"))
"""The shared FER2013 data (tar + labels.csv); never copied into the repository."""
FER_TAR = FER_DIR / "fer2013_ferplus_png.tar"
FER_LABELS = FER_DIR / "labels.csv"
FER_FOLDERS = ("FER2013Train", "FER2013Valid", "FER2013Test")


class FerImage(NamedTuple):
    """One real FER2013 image: tar member name, PNG bytes (48x48 L) and ``fer2013_label`` (0..6 or -1)."""

    member: str
    png: bytes
    label: int


def fer_available() -> bool:
    """True when the shared FER2013 tar and labels.csv exist."""
    return FER_TAR.is_file() and FER_LABELS.is_file()


def tar_member_ranges(members: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(data offset, size) of the named members of the plain USTAR FER tar, walking raw 512-byte headers.

    Independent of ``tarfile`` (which the engine uses), and fast: it stops once all members are found.
    """
    wanted: set[str] = set(members)
    found: dict[str, tuple[int, int]] = {}
    with open(FER_TAR, "rb") as fh:
        pos = 0
        while len(found) < len(wanted):
            fh.seek(pos)
            header = fh.read(512)
            if len(header) < 512 or header == bytes(512):
                break
            prefix, name = header[345:500].rstrip(b"\0"), header[:100].rstrip(b"\0")
            full = (prefix + b"/" + name if prefix else name).decode()
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            if full in wanted:
                found[full] = (pos + 512, size)
            pos += 512 + -(-size // 512) * 512
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"not in {FER_TAR}: {sorted(missing)[:3]}")
    return found


@functools.lru_cache(maxsize=8)
def fer_images(n: int, folder: str = "FER2013Train") -> tuple[FerImage, ...]:
    """The first ``n`` images of ``folder`` in labels.csv order (FER2013Train starts fer0000000: angry, angry,
    fear, sad, neutral, fear, sad, happy, happy, fear, angry, neutral)."""
    picked: list[tuple[str, int]] = []
    with open(FER_LABELS, newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec["path"].startswith(folder + "/"):
                picked.append((rec["path"], int(rec["fer2013_label"])))
                if len(picked) == n:
                    break
    ranges = tar_member_ranges([member for member, _ in picked])
    out = []
    with open(FER_TAR, "rb") as fh:
        for member, label in picked:
            offset, size = ranges[member]
            fh.seek(offset)
            out.append(FerImage(member, fh.read(size), label))
    return tuple(out)


def face(i: int) -> bytes:
    """PNG bytes of the i-th FER2013Train image (i < 32)."""
    return fer_images(32)[i].png


def encode(png: bytes, suffix: str) -> bytes:
    """Re-encode PNG bytes for a file suffix (.png kept as is; .jpg/.jpeg/.bmp/.webp via pillow)."""
    fmt = {".png": None, ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[suffix.lower()]
    if fmt is None:
        return png
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_scene(faces: Sequence[tuple[bytes, tuple[int, int]]], size: tuple[int, int] = (160, 120)) -> bytes:
    """JPEG of a grey ``size`` (w, h) canvas with 48x48 faces pasted at (left, top); face box = (l, t, l+48, t+48)."""
    canvas = Image.new("L", size, 128)
    for png, at in faces:
        canvas.paste(Image.open(io.BytesIO(png)), at)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_file(path: Path, data: bytes | str) -> Path:
    """Write bytes or text to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def write_images(root: Path, rel_paths: Sequence[str], first: int = 0) -> None:
    """Write FER2013Train images ``first``, ``first+1`` ... to ``root/<rel>`` (encoded for each suffix)."""
    for i, rel in enumerate(rel_paths):
        write_file(root / rel, encode(face(first + i), Path(rel).suffix))


# ---------------------------------------------------------------- formats


def write_fer2013(root: Path, n_per_split: int = 3) -> Path:
    """Real-format FER2013 folder: tar of the first ``n_per_split`` images per split + their labels.csv rows."""
    root.mkdir(parents=True, exist_ok=True)
    with open(FER_LABELS, newline="") as fh:
        header = next(csv.reader(fh))
    rows = [row for folder in FER_FOLDERS for row in _first_rows(FER_LABELS, folder, n_per_split)]
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    with tarfile.open(root / "fer2013_ferplus_png.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for folder in FER_FOLDERS:
            for img in fer_images(n_per_split, folder):
                info = tarfile.TarInfo(img.member)
                info.size, info.mtime = len(img.png), 0
                tf.addfile(info, io.BytesIO(img.png))
    return root


def _first_rows(labels: Path, folder: str, n: int) -> list[list[str]]:
    out = []
    with open(labels, newline="") as fh:
        for row in csv.reader(fh):
            if row[0].startswith(folder + "/"):
                out.append(row)
                if len(out) == n:
                    break
    return out


IMAGE_FOLDER_FILES = (
    "angry/fer0000000.png",
    "angry/fer0000001.jpg",
    "Happy/x_1.png",
    "surprised/sub/deep.bmp",
    "contempt/c.webp",
    ".cache/hidden.png",
    "loose.png",
)


def write_image_folder(root: Path) -> Path:
    """``root/<class>/`` layout: IMAGE_FOLDER_FILES (Train images 0..6) plus ``angry/readme.txt``."""
    write_images(root, IMAGE_FOLDER_FILES)
    write_file(root / "angry" / "readme.txt", "not an image")
    return root


IMAGE_FOLDER_SPLIT_FILES = (
    "train/happy/a.png",
    "train/sad/b.jpg",
    "Validation/fear/c.png",
    "unlabeled/d.png",
    "unlabeled/neutral/e.png",
)


def write_image_folder_splits(root: Path) -> Path:
    """``root/<split>/<class>/`` layout: IMAGE_FOLDER_SPLIT_FILES (Train images 0..4)."""
    write_images(root, IMAGE_FOLDER_SPLIT_FILES)
    return root


def write_flat_folder(root: Path) -> Path:
    """``a.png``, ``b/c.jpg``, ``b/d/e.webp`` (Train images 0..2) plus ``notes.txt`` and ``.hidden.png``."""
    write_images(root, ("a.png", "b/c.jpg", "b/d/e.webp", ".hidden.png"))
    write_file(root / "notes.txt", "not an image")
    return root


def write_csv_list(root: Path, *, header: bool = True) -> Path:
    """``root/list.csv`` (returned) over ``imgs/``: names, an index, empty label/split, a ``../`` path."""
    write_images(root, ("imgs/a.png", "imgs/b.jpg", "imgs/sub/c.png", "other/d.png"))
    lines = ["path,label,split"] if header else []
    lines += ["imgs/a.png,happy,train", "imgs/b.jpg,3,Validation", "imgs/sub/c.png,,", "./other/d.png,Contempt,test"]
    return write_file(root / "list.csv", "\n".join(lines) + "\n")


EXPW_LABEL_LST = """\
angry_actor_104.jpg 0 20 10 58 68 22.9362 0
angry_actor_104.jpg 1 30 70 118 78 15.5 3
angry_actor_104.jpg 0 20 10 58 68 22.9362 0
happy.girl.jpg 0 5 6 54 53 40.0 6
"""
"""Fields: image face_id top left right bottom confidence label (line 3 repeats line 1 exactly)."""


def write_expw(root: Path) -> Path:
    """ExpW layout: two scene JPEGs in ``image/origin/`` and EXPW_LABEL_LST as ``label/label.lst``."""
    write_file(root / "image/origin/angry_actor_104.jpg", make_scene([(face(0), (10, 20)), (face(1), (70, 30))]))
    write_file(root / "image/origin/happy.girl.jpg", make_scene([(face(7), (6, 5))], size=(64, 64)))
    write_file(root / "label/label.lst", EXPW_LABEL_LST)
    return root


AFFECTNET_IMAGES = (
    "689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg",
    "392/c4db2f9b7e4b.jpg",
    "993/02e06ee5.jpg",
)
_LANDMARKS = ";".join(str(float(v)) for v in range(136))


def write_affectnet(root: Path) -> Path:
    """AffectNet CSV layout: training.csv (with header) and validation.csv (header-less).

    training.csv rows (path index, x, y, w, h, expression, valence, arousal):
    (0, 134.0, 134.0, 48, 48, 1, 0.5, 0.25), (1, 20.0, 20.0, 48, 48, 7, -0.5, 0.75), (2, 22, 22, 48, 48, 8, -2, -2),
    (0, 1, 1, 48, 48, 10, -2, -2) [No-Face: skipped], (0, 10, 10, 48, 48, 3, 0.1, 0.2) [same image again],
    (1, 0, 0, -1, -1, 0, 0, 0) [negative box: skipped]; validation.csv: (2, 5, 6, 48, 48, 6, -0.9, 0.8).
    """
    for i, rel in enumerate(AFFECTNET_IMAGES):
        write_file(root / "Manually_Annotated_Images" / rel, make_scene([(face(i), (20, 20))], size=(200, 200)))
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"

    def line(i: int, x: str, y: str, w: str, h: str, code: int, v: str, a: str) -> str:
        return ",".join([AFFECTNET_IMAGES[i], x, y, w, h, _LANDMARKS, str(code), v, a])

    train = [
        header,
        line(0, "134.0", "134.0", "48", "48", 1, "0.5", "0.25"),
        line(1, "20.0", "20.0", "48", "48", 7, "-0.5", "0.75"),
        line(2, "22", "22", "48", "48", 8, "-2", "-2"),
        line(0, "1", "1", "48", "48", 10, "-2", "-2"),
        line(0, "10", "10", "48", "48", 3, "0.1", "0.2"),
        line(1, "0", "0", "-1", "-1", 0, "0", "0"),
    ]
    lists = root / "Manually_Annotated_file_lists"
    write_file(lists / "training.csv", "\n".join(train) + "\n")
    write_file(lists / "validation.csv", line(2, "5", "6", "48", "48", 6, "-0.9", "0.8") + "\n")
    return root


DIFFUSIONFER_SHEET = """\
subDirectory_filePath,valence,arousal,expression
DiffusionEmotion_S_cropped/neutral/aksjlkjl_0.png,-0.1,0.1,0
DiffusionEmotion_S_cropped/angry/bcdefghi_6.png,-0.6,0.7,3
DiffusionEmotion_S_cropped/happy/kwblojky_-.png,0.7,0.4,1
"""


def write_diffusionfer(root: Path) -> Path:
    """DiffusionFER layout: ``DiffusionEmotion_S/dataset_sheet.csv`` + unzipped ``DiffusionEmotion_S/cropped/``."""
    sheet_rows = DIFFUSIONFER_SHEET.splitlines()[1:]
    rels = [r.split(",")[0].replace("DiffusionEmotion_S_cropped/", "DiffusionEmotion_S/cropped/") for r in sheet_rows]
    write_images(root, rels, first=4)
    write_file(root / "DiffusionEmotion_S/dataset_sheet.csv", DIFFUSIONFER_SHEET)
    return root


AFFWILD2_EDITIONS = {
    "2020": "annotations/EXPR_Set",
    "3rd": "Third ABAW Annotations/EXPR_Classification_Challenge",
    "5th": "EXPR_Classification_Challenge",
    "6th": "6th_ABAW_Annotations/EXPR_Recognition_Challenge",
}
AFFWILD2_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"


def write_affwild2(root: Path, edition: str = "6th") -> Path:
    """Aff-Wild2 layout of one ABAW edition (AFFWILD2_EDITIONS) with two annotated videos.

    Train video ``1-30-1280x720``: labels 0, 4, -1, 7, 2 for frames 1..5; frame 00004.jpg is missing.
    Validation video ``video10_1_left``: labels 5, -1, 6 for frames 1..3; frame 00003.jpg is missing.
    ``Train_Set`` is spelt ``Training_Set`` in the 2020 edition.
    """
    expr = root / AFFWILD2_EDITIONS[edition]
    train_dir = "Training_Set" if edition == "2020" else "Train_Set"
    write_file(expr / train_dir / "1-30-1280x720.txt", AFFWILD2_HEADER + "\n0\n4\n-1\n7\n2\n")
    write_file(expr / "Validation_Set" / "video10_1_left.txt", AFFWILD2_HEADER + "\n5\n-1\n6\n\n")
    frames = root / "cropped_aligned"
    write_images(frames, [f"1-30-1280x720/{i:05d}.jpg" for i in (1, 2, 3, 5)])
    write_images(frames, [f"video10_1_left/{i:05d}.jpg" for i in (1, 2)], first=4)
    return root


def write_mindface(root: Path) -> Path:
    """MindFace ``data/`` layout; CSVs: label_train (header, a name and an index), val (no header), test (image only).

    label_train.csv: ``image,label`` / ``a.jpg,Happiness`` / ``label_train_img/b.jpg,7``; val.csv: ``v1.jpg,2``;
    test.csv: ``t1.jpg``; unlabel_train_img/: ``u1.jpg``, ``batch2/u2.png``.
    """
    write_images(root, ("label_train_img/a.jpg", "label_train_img/b.jpg", "unlabel_train_img/u1.jpg"))
    write_images(root, ("unlabel_train_img/batch2/u2.png", "val_img/v1.jpg", "test_img/t1.jpg"), first=3)
    write_file(root / "label_train.csv", "image,label\na.jpg,Happiness\nlabel_train_img/b.jpg,7\n")
    write_file(root / "val.csv", "v1.jpg,2\n")
    write_file(root / "test.csv", "t1.jpg\n")
    return root


# ---------------------------------------------------------------- bad inputs


def make_bad_inputs(directory: Path) -> dict[str, Path]:
    """Write one broken image per failure kind and return ``kind -> path``.

    Kinds: ``empty`` (0 bytes), ``truncated`` (first half of a real PNG), ``not_image`` (text named .jpg),
    ``too_small`` (valid 1x1 PNG), ``too_large`` (valid 8x8 PNG whose IHDR claims 30000x30000, CRC fixed:
    a decompression bomb header that decoders must refuse before allocating).
    """
    directory.mkdir(parents=True, exist_ok=True)
    png = face(0)
    out = {
        "empty": write_file(directory / "empty.png", b""),
        "truncated": write_file(directory / "truncated.png", png[: len(png) // 2]),
        "not_image": write_file(directory / "text.jpg", "this is a text file, not a JPEG\n"),
        "too_small": write_file(directory / "tiny.png", _png(Image.new("L", (1, 1), 77))),
        "too_large": write_file(directory / "bomb.png", claim_size(_png(Image.new("L", (8, 8), 77)), 30000, 30000)),
    }
    return out


def claim_size(png: bytes, width: int, height: int) -> bytes:
    """PNG bytes with the IHDR width/height replaced (and the IHDR CRC recomputed); pixel data untouched."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG starting with IHDR")
    ihdr = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + ihdr + crc + png[33:]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- seed-method fixtures (FER2013 images)

FER_TO_AFFECTNET = (6, 5, 4, 1, 2, 3, 0)
"""FER2013 code (angry, disgust, fear, happy, sad, surprise, neutral) → AffectNet expression code."""
SYNTHETIC_VA = {
    0: (-0.6, 0.7),
    1: (-0.6, 0.4),
    2: (-0.5, 0.7),
    3: (0.7, 0.4),
    4: (-0.6, -0.3),
    5: (0.3, 0.8),
    6: (0.0, 0.0),
}
"""SYNTHETIC (not measured) class-wise (valence, arousal) centres per FER2013 code, for VA fixtures only."""


def synthetic_va(label: int, i: int) -> tuple[float, float]:
    """Synthetic valence/arousal of FER2013 image i with FER2013 code ``label``: the class centre plus a
    deterministic offset in [-0.15, 0.15] (one decimal, as AffectNet/DiffusionFER write them)."""
    v, a = SYNTHETIC_VA[label]
    dv, da = ((i * 37) % 31 - 15) / 100, ((i * 53) % 31 - 15) / 100
    return round(max(-1.0, min(1.0, v + dv)), 1), round(max(-1.0, min(1.0, a + da)), 1)


def write_affectnet_va(root: Path, n_train: int = 200, n_val: int = 60) -> Path:
    """AffectNet CSV layout over real FER2013 faces with SYNTHETIC valence/arousal (see SYNTHETIC_VA).

    training.csv (with header) holds the first ``n_train`` labelled FER2013Train images, validation.csv (header-less)
    the first ``n_val`` labelled FER2013Valid images; each 48x48 face is its own JPEG ``<k % 10>/<fer name>.jpg`` with
    box (0, 0, 48, 48); the expression is the FER2013 label in AffectNet order. Images without a FER2013 label are
    skipped.
    """
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for file_name, folder, n in (("training.csv", "FER2013Train", n_train), ("validation.csv", "FER2013Valid", n_val)):
        lines = [header] if file_name == "training.csv" else []
        images = [img for img in fer_images(2 * n + 20, folder) if img.label >= 0][:n]
        for k, img in enumerate(images):
            rel = f"{k % 10}/{Path(img.member).stem}.jpg"
            write_file(root / "Manually_Annotated_Images" / rel, encode(img.png, ".jpg"))
            v, a = synthetic_va(img.label, k + (0 if folder == "FER2013Train" else 100_000))
            code = FER_TO_AFFECTNET[img.label]
            lines.append(",".join([rel, "0", "0", "48", "48", _LANDMARKS, str(code), str(v), str(a)]))
        write_file(root / "Manually_Annotated_file_lists" / file_name, "\n".join(lines) + "\n")
    return root


FER_TO_ABAW = (1, 2, 3, 4, 5, 6, 0)
"""FER2013 code → Aff-Wild2 EXPR index (Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other)."""


def _write_affwild2_video(root: Path, split_dir: str, name: str, run: Sequence[FerImage]) -> None:
    """One 6th-ABAW video: ``<split_dir>/<name>.txt`` (each face's FER2013 label in Aff-Wild2 order, -1 without one)
    and its frames ``cropped_aligned/<name>/00001.jpg``..."""
    labels = [str(FER_TO_ABAW[img.label]) if img.label >= 0 else "-1" for img in run]
    write_file(
        root / AFFWILD2_EDITIONS["6th"] / split_dir / f"{name}.txt", AFFWILD2_HEADER + "\n" + "\n".join(labels) + "\n"
    )
    for i, img in enumerate(run, start=1):
        write_file(root / "cropped_aligned" / name / f"{i:05d}.jpg", encode(img.png, ".jpg"))


def write_affwild2_videos(root: Path, videos: int = 4, frames: int = 12, first: int = 0) -> Path:
    """Aff-Wild2 (6th ABAW) layout whose "videos" are runs of consecutive real FER2013Train faces.

    Video ``v`` (``vid<v>``, all in ``Train_Set``) holds ``frames`` frames 00001.jpg...; frame i is FER2013Train image
    ``first + v * frames + i - 1`` and its annotation line is that image's FER2013 label in Aff-Wild2 order (-1 when
    it has none). ``Validation_Set`` holds one one-frame video (the next image). A stand-in for video frames:
    neighbouring frames are different faces.
    """
    images = fer_images(first + videos * frames + 1, "FER2013Train")[first:]
    for v in range(videos):
        _write_affwild2_video(root, "Train_Set", f"vid{v}", images[v * frames : (v + 1) * frames])
    write_file(root / AFFWILD2_EDITIONS["6th"] / "Validation_Set" / "vidval.txt", AFFWILD2_HEADER + "\n0\n")
    write_file(root / "cropped_aligned" / "vidval" / "00001.jpg", encode(images[-1].png, ".jpg"))
    return root


def write_affwild2_segments(
    root: Path, train_videos: int = 24, val_videos: int = 8, frames: int = 32, segment: int = 8, seed: int = 0
) -> Path:
    """Aff-Wild2 (6th ABAW) layout whose videos hold segments of ``segment`` frames sharing one expression, like real
    video: each segment is ``segment`` distinct real FER2013 faces of one class (drawn, seeded, from the classes
    that still have enough unused faces), so neighbouring frames agree on the label but not on the face.

    ``Train_Set`` videos ``tr<v>`` use FER2013Train faces, ``Validation_Set`` videos ``va<v>`` FER2013Valid faces;
    every face is used once. Annotation lines are the FER2013 labels in Aff-Wild2 order.
    """
    rng = random.Random(seed)
    need = frames // segment * segment
    for split_dir, prefix, folder, n_videos in (
        ("Train_Set", "tr", "FER2013Train", train_videos),
        ("Validation_Set", "va", "FER2013Valid", val_videos),
    ):
        pool = [img for img in fer_images(n_videos * need * 4, folder) if img.label >= 0]
        by_class: dict[int, list[FerImage]] = {}
        for img in pool:
            by_class.setdefault(img.label, []).append(img)
        for v in range(n_videos):
            run: list[FerImage] = []
            for _ in range(frames // segment):
                ready = sorted(c for c, imgs in by_class.items() if len(imgs) >= segment)
                c = rng.choice(ready)
                run += [by_class[c].pop(0) for _ in range(segment)]
            _write_affwild2_video(root, split_dir, f"{prefix}{v}", run)
    return root


ABAW8_NAMES = AFFWILD2_HEADER.split(",")
"""Aff-Wild2 EXPR class names by index (the abaw8 label space)."""


def _ferplus_contempt(folder: str, n: int) -> set[str]:
    """Members among the first ``n`` rows of ``folder`` whose FER+ vote majority (ties: none) is contempt."""
    out: set[str] = set()
    with open(FER_LABELS, newline="") as fh:
        for k, rec in enumerate(r for r in csv.DictReader(fh) if r["path"].startswith(folder + "/")):
            if k == n:
                break
            votes = {c: int(v) for c, v in rec.items() if c.startswith("ferplus_") and c != "ferplus_NF"}
            top = max(votes.values())
            if votes["ferplus_contempt"] == top > 0 and list(votes.values()).count(top) == 1:
                out.add(rec["path"])
    return out


def write_mindface_fer(
    root: Path, n_labelled: int = 1000, n_unlabelled: int = 3000, n_val: int = 500, n_test: int = 500
) -> Path:
    """MindFace ``data/`` layout (label_train_img/ + label_train.csv, unlabel_train_img/, val_img/ + val.csv,
    test_img/ + test.csv) over real 48x48 FER2013 PNGs, labels as abaw8 class names.

    label_train takes the first ``n_labelled`` FER2013Train rows, unlabel_train the next ``n_unlabelled`` (no CSV),
    val the first ``n_val`` FER2013Valid rows, test the first ``n_test`` FER2013Test rows. Label: the FER2013 label in
    Aff-Wild2 naming, except ``Other`` where the FER+ vote majority is contempt (an expression outside the basic 7);
    rows with neither are left out. CSVs have the header ``image,label``.
    """
    parts = (
        ("label_train_img", "label_train.csv", "FER2013Train", 0, n_labelled),
        ("unlabel_train_img", None, "FER2013Train", n_labelled, n_labelled + n_unlabelled),
        ("val_img", "val.csv", "FER2013Valid", 0, n_val),
        ("test_img", "test.csv", "FER2013Test", 0, n_test),
    )
    for img_dir, csv_name, folder, lo, hi in parts:
        contempt = _ferplus_contempt(folder, hi)
        lines = ["image,label"]
        for img in fer_images(hi, folder)[lo:hi]:
            name = (
                "Other" if img.member in contempt else (ABAW8_NAMES[FER_TO_ABAW[img.label]] if img.label >= 0 else "")
            )
            if csv_name is not None and not name:
                continue
            write_file(root / img_dir / Path(img.member).name, img.png)
            lines.append(f"{Path(img.member).name},{name}")
        if csv_name is not None:
            write_file(root / csv_name, "\n".join(lines) + "\n")
    return root


BUILDERS = {
    "affectnet_va": write_affectnet_va,
    "affwild2_videos": write_affwild2_videos,
    "affwild2_segments": write_affwild2_segments,
    "mindface": write_mindface_fer,
}
"""The recipes' datasets by name (``python bench/fer_layouts.py NAME OUT_DIR``)."""


def main() -> None:
    """``python bench/fer_layouts.py {affectnet_va,affwild2_videos,affwild2_segments,mindface} OUT_DIR``."""
    import sys

    if len(sys.argv) != 3 or sys.argv[1] not in BUILDERS:
        sys.exit(f"usage: python bench/fer_layouts.py {{{','.join(BUILDERS)}}} OUT_DIR")
    print(BUILDERS[sys.argv[1]](Path(sys.argv[2])))


if __name__ == "__main__":
    main()
