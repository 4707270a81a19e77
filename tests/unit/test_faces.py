"""MTCNN face detection (engine/faces.py) on real FER2013 faces, the face crop in process_image, ingest config."""

from __future__ import annotations

import importlib.util
import io
import re
from dataclasses import asdict, replace

import numpy as np
import pytest
from PIL import Image

from engine import faces
from engine.config import IngestConfig, SourceConfig
from engine.errors import ConfigError, MissingExtra
from engine.fingerprint import fingerprint
from engine.imaging import process_image
from tests.fixtures import fer_images, ingest_stage

HAVE_FACENET = importlib.util.find_spec("facenet_pytorch") is not None
needs_facenet = pytest.mark.skipif(
    not HAVE_FACENET, reason="facenet_pytorch not installed (.venv/bin/pip install --no-deps facenet-pytorch)"
)


def _rgb160(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((160, 160), Image.Resampling.BILINEAR))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


GREY = np.full((160, 160, 3), 128, np.uint8)


@needs_facenet
def test_mtcnn_finds_faces_on_real_fer2013_and_none_on_grey(fer2013_dir):
    imgs = fer_images(5)
    found = faces.detect_faces([_rgb160(img.png) for img in imgs] + [GREY])
    for img, f in zip(imgs, found, strict=False):
        print(img.member, "no face" if f is None else f"prob {f.prob:.4f} box {tuple(round(v) for v in f.box)}")
    hits = [f for f in found[:5] if f is not None]
    assert len(hits) >= 4
    assert all(f.prob >= 0.9 for f in hits)
    # the face covers most of a FER2013 crop: the box centre is inside the middle half of the image
    assert all(40 <= (f.box[0] + f.box[2]) / 2 <= 120 and 40 <= (f.box[1] + f.box[3]) / 2 <= 120 for f in hits)
    assert found[5] is None


@needs_facenet
def test_detect_faces_accepts_grey_and_mixed_sizes(fer2013_dir):
    png = fer_images(1)[0].png
    grey48 = np.asarray(Image.open(io.BytesIO(png)))
    assert grey48.shape == (48, 48)
    out = faces.detect_faces([grey48, _rgb160(png), np.full((64, 80), 200, np.uint8)])
    assert out[0] is not None and out[1] is not None and out[2] is None
    with pytest.raises(ValueError, match="shape"):
        faces.detect_faces([np.zeros((8, 8, 4), np.uint8)])


@needs_facenet
def test_process_image_crops_the_face_or_quarantines_no_face(fer2013_dir):
    policy = IngestConfig(detect_faces=True, face_size=64)
    png = _png(_rgb160(fer_images(1)[0].png))
    kept = process_image(png, policy)
    assert kept.reason is None
    assert (kept.width, kept.height) == (64, 64)
    assert Image.open(io.BytesIO(kept.data)).size == (64, 64)

    blank = process_image(_png(GREY), policy)
    assert (blank.reason, blank.detail) == ("no_face", "MTCNN found no face")
    assert blank.data is None

    strict = process_image(png, replace(policy, face_min_prob=1.0))
    assert strict.reason == "no_face"
    assert re.fullmatch(r"best face prob 0\.99\d* < face_min_prob 1\.0", strict.detail), strict.detail
    # resize still applies after the face crop
    assert (process_image(png, replace(policy, resize=32)).width, 32) == (32, 32)


def test_crop_box_square_margin_clipped():
    assert faces.crop_box((40.0, 50.0, 80.0, 110.0), 160, 160, 0.0) == (30, 50, 90, 110)
    assert faces.crop_box((40.0, 50.0, 80.0, 110.0), 160, 160, 0.25) == (15, 35, 105, 125)
    assert faces.crop_box((-3.0, -3.0, 118.0, 165.0), 160, 160, 0.2) == (0, 0, 160, 160)
    assert faces.crop_box((200.0, 200.0, 240.0, 240.0), 160, 160, 0.0) is None


def test_missing_facenet_raises_missing_extra_with_install_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "facenet_pytorch", None)
    with pytest.raises(MissingExtra, match="pip install --no-deps facenet-pytorch"):
        faces.require_detector()


def test_ingest_config_face_keys_validated_and_fingerprint_unchanged_when_off(tmp_path):
    with pytest.raises(ConfigError, match="face_min_prob"):
        IngestConfig(face_min_prob=1.5)
    with pytest.raises(ConfigError, match="face_size"):
        IngestConfig(face_size=0)
    src = SourceConfig(name="s", format="image_folder", path=str(tmp_path))
    off = IngestConfig()
    # the fingerprint of an ingest from before face detection existed (these nine keys only)
    old = {
        k: v
        for k, v in asdict(off).items()
        if k
        in (
            "samples_per_shard",
            "list_chunk_rows",
            "image_format",
            "resize",
            "grayscale",
            "min_side_px",
            "max_pixels",
            "max_bytes",
            "phash_leakage",
        )
    }
    assert len(old) == 9
    # ... and of a source from before follow_outside existed (off is the default)
    old_src = {k: v for k, v in asdict(src).items() if k != "follow_outside"}
    before = fingerprint("ingest", 1, {"source": old_src, "ingest": old})
    stage = ingest_stage(str(tmp_path), src, off)
    assert stage.fingerprint() == before
    assert ingest_stage(str(tmp_path), src, replace(off, face_margin=0.5)).fingerprint() == before
    on = ingest_stage(str(tmp_path), src, replace(off, detect_faces=True))
    assert on.fingerprint() != before
    assert on.cfg.detect_faces and on.cfg.face_size == 112
    assert ingest_stage(str(tmp_path), src, replace(off, detect_faces=True, face_size=64)).fingerprint() != (
        on.fingerprint()
    )


@needs_facenet
def test_alignment_levels_the_eyes_of_rotated_real_faces(fer2013_dir):
    """Real FER2013 faces (160 px) rotated by ±15°: MTCNN's eye line follows the rotation, and after face_align the
    eyes of the aligned crop lie level (within the detector's landmark noise)."""
    policy = IngestConfig(image_format="png", grayscale=False, detect_faces=True, face_size=160, face_align=True)
    before, after = [], []
    for img in fer_images(3):
        upright = Image.fromarray(_rgb160(img.png))
        base = faces.detect_faces([np.asarray(upright)])[0]
        assert base is not None and base.landmarks is not None and len(base.landmarks) == 5
        for degrees in (15, -15):
            tilted = upright.rotate(degrees, resample=Image.Resampling.BILINEAR)  # counter-clockwise on screen
            face = faces.detect_faces([np.asarray(tilted)])[0]
            assert face is not None
            # counter-clockwise on screen raises the right eye: the eye angle drops by about `degrees`
            assert abs(faces.eye_angle(face) - (faces.eye_angle(base) - degrees)) < 6, (img.member, degrees)
            out = process_image(_png(np.asarray(tilted)), policy)
            assert out.reason is None
            aligned = faces.detect_faces([np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))])[0]
            assert aligned is not None
            assert abs(faces.eye_angle(aligned)) < 6, (img.member, degrees, faces.eye_angle(aligned))
            before.append(abs(faces.eye_angle(face)))
            after.append(abs(faces.eye_angle(aligned)))
    print("eye angle before / after alignment:", np.round(before, 1), np.round(after, 1))
    assert np.mean(after) < np.mean(before) / 3
