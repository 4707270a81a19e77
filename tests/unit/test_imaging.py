"""The one decoder at ingest: 16-bit grey scaled to 8 bits, EXIF orientation applied, 8-bit PNGs kept byte for byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.config import IngestConfig
from engine.errors import SourceFormatError
from engine.imaging import decode_pixels, grey_to_8bit, process_image
from tests.fixtures import face, fer_available

pytestmark = pytest.mark.skipif(not fer_available(), reason="FER2013 data not found (set FER2013_DIR)")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_eight_bit_face_is_stored_unchanged() -> None:
    png = face(0)
    check = process_image(png, IngestConfig())
    assert check.reason is None and check.data == png  # no pixel operation, same format: original bytes


def test_sixteen_bit_face_ingests_as_the_eight_bit_face() -> None:
    grey = np.asarray(Image.open(io.BytesIO(face(3))))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # the same face in 16 bits (I;16), full range
    check = process_image(_png(wide), IngestConfig())
    assert check.reason is None
    stored = decode_pixels(check.data)
    assert stored.dtype == np.uint8 and np.array_equal(stored, grey)  # v * 257 / 257 is exact
    assert check.sha256 == process_image(face(3), IngestConfig()).sha256  # an exact twin of the 8-bit file
    other = np.asarray(Image.open(io.BytesIO(face(4))))
    other_check = process_image(_png(Image.fromarray(other.astype(np.uint16) * 257)), IngestConfig())
    assert other_check.sha256 != check.sha256  # distinct faces stay distinct (they used to clip to all-white)


def test_exif_orientation_is_applied_at_ingest_and_decode() -> None:
    grey = np.asarray(Image.open(io.BytesIO(face(5))))
    img = Image.fromarray(grey)
    exif = img.getexif()
    exif[0x0112] = 3  # rotated 180 degrees
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    assert np.array_equal(decode_pixels(buf.getvalue()), grey[::-1, ::-1])
    check = process_image(buf.getvalue(), IngestConfig())
    assert check.reason is None and np.array_equal(decode_pixels(check.data), grey[::-1, ::-1])


def _tiff(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "wide"),
    [
        ("F", lambda g: (g / 255.0).astype(np.float32)),  # numpy / scikit-image float images: [0, 1]
        ("F", lambda g: g.astype(np.float32)),  # float holding 0..255
        ("I", lambda g: g.astype(np.int32)),  # int32 holding 8-bit values
        ("I", lambda g: g.astype(np.int32) * 257),  # int32 holding 16-bit values
        ("I;16", lambda g: g.astype(np.uint16) * 257),  # 16-bit TIFF
    ],
    ids=["float01", "float255", "int32_8bit", "int32_16bit", "uint16"],
)
def test_wide_grey_tiff_ingests_as_the_eight_bit_face(mode: str, wide: object) -> None:
    grey = np.asarray(Image.open(io.BytesIO(face(3))))
    data = _tiff(wide(grey))  # type: ignore[operator]
    assert Image.open(io.BytesIO(data)).mode == mode
    check = process_image(data, IngestConfig())
    assert check.reason is None, check.detail
    assert np.array_equal(decode_pixels(check.data), grey)  # the face itself, not a black square
    assert check.sha256 == process_image(face(3), IngestConfig()).sha256


@pytest.mark.parametrize(
    ("values", "detail"),
    [
        (np.full((48, 48), -0.5, np.float32), "float grey image with values in [-0.5, -0.5]"),
        (np.full((48, 48), 300.0, np.float32), "float grey image with values in [300, 300]"),
        (np.full((48, 48), np.nan, np.float32), "F grey image holds NaN or infinite values"),
        (np.full((48, 48), 70000, np.int32), "32-bit integer grey image with values in [70000, 70000]"),
        (np.full((48, 48), -1, np.int32), "32-bit integer grey image with values in [-1, -1]"),
    ],
    ids=["float_negative", "float_above_255", "float_nan", "int32_above_16bit", "int32_negative"],
)
def test_wide_grey_of_ambiguous_range_is_quarantined_with_its_range(values: np.ndarray, detail: str) -> None:
    check = process_image(_tiff(values), IngestConfig())
    assert check.reason == "ambiguous_range" and check.data is None
    assert check.detail.startswith(detail)
    with pytest.raises(SourceFormatError, match="cannot map image to 8 bits"):
        decode_pixels(_tiff(values))


def test_grey_to_8bit_rule_by_hand() -> None:
    assert grey_to_8bit(np.array([[0.0, 0.5, 1.0]]), "F").tolist() == [[0, 128, 255]]  # 127.5 rounds to even: 128
    assert grey_to_8bit(np.array([[0.0, 1.5, 255.0]]), "F").tolist() == [[0, 2, 255]]  # above 1: the 0..255 scale
    assert grey_to_8bit(np.array([[0, 255]]), "I").tolist() == [[0, 255]]
    assert grey_to_8bit(np.array([[0, 256, 65535]]), "I").tolist() == [[0, 1, 255]]  # above 255: 16-bit values
    assert grey_to_8bit(np.array([[0, 128, 65535]]), "I;16").tolist() == [[0, 0, 255]]  # by bit depth, not range
