"""The one decoder at ingest: 16-bit grey scaled to 8 bits, EXIF orientation applied, 8-bit PNGs kept byte for byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.config import IngestConfig
from engine.imaging import decode_pixels, process_image
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
