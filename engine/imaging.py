"""Decode, validate, crop/resize, re-encode and hash one image (Pillow + numpy; torch only for face detection)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import SourceFormatError

if TYPE_CHECKING:
    from engine.config import IngestConfig

# Quarantine reasons, in the order they are checked.
REASONS = (
    "empty",
    "too_large",
    "not_an_image",
    "truncated",
    "decode_error",
    "ambiguous_range",
    "bad_box",
    "too_small",
    "no_face",
    "duplicate",
)

_FORMAT_EXT = {"PNG": "png", "JPEG": "jpg"}


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """Outcome of ``process_image``: ``reason`` is None for a kept image, else one of ``REASONS``."""

    reason: str | None
    detail: str = ""
    data: bytes | None = None
    ext: str = ""
    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: int = 0


def process_image(data: bytes, policy: IngestConfig, box: tuple[int, int, int, int] | None = None) -> ImageCheck:
    """Validate one encoded image, apply the optional crop/resize/grey of the ``ingest`` section ``policy``, and hash
    the stored pixels.

    The claimed size is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
    Original bytes are kept unchanged when no pixel operation applies and the format already matches; otherwise the
    image is re-encoded deterministically. ``sha256`` is over the stored pixels (mode, shape and bytes), so two files
    with the same pixels are exact duplicates whatever their encoding.

    With ``policy.detect_faces`` the (box-cropped) image is cropped to its most confident MTCNN face, enlarged by
    ``face_margin`` of the face side on each side (clipped to the image), and resized to ``face_size`` squared;
    ``resize`` then still applies. No face with probability >= ``face_min_prob`` → reason ``no_face``. With
    ``face_align`` the image is first rotated about the face box centre so that the eyes lie level.
    """
    if not data:
        return ImageCheck("empty", "zero-byte file")
    if len(data) > policy.max_bytes:
        return ImageCheck("too_large", f"{len(data)} bytes > max_bytes {policy.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > policy.max_pixels:
                return ImageCheck("too_large", f"header claims {width}x{height} > max_pixels {policy.max_pixels}")
            fmt = img.format
            img.load()
    except Image.DecompressionBombError as exc:
        return ImageCheck("too_large", f"decompression bomb: {exc}"[:200])
    except UnidentifiedImageError:
        return ImageCheck("not_an_image", "not a decodable image format")
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncat" in str(exc).lower() or "end of" in str(exc).lower() else "decode_error"
        return ImageCheck(reason, f"{type(exc).__name__}: {exc}"[:200])
    upright = upright_8bit(img)  # EXIF orientation and 8-bit grey / RGB, as every later decode sees the image
    if isinstance(upright, str):
        return ImageCheck("ambiguous_range", upright)
    changed = upright is not img
    img = upright
    if box is not None:
        left, top, right, bottom = box
        if not (0 <= left < right <= width and 0 <= top < bottom <= height):
            return ImageCheck("bad_box", f"box {box} outside image {width}x{height}")
        img, changed = img.crop(box), True
    if policy.grayscale and img.mode != "L":
        img, changed = img.convert("L"), True
    if min(img.size) < policy.min_side_px:
        return ImageCheck("too_small", f"{img.size[0]}x{img.size[1]} < min_side_px {policy.min_side_px}")
    if policy.detect_faces:
        crop = _face_crop(img, policy)
        if isinstance(crop, str):
            return ImageCheck("no_face", crop)
        img, changed = crop, True
    if policy.resize is not None and img.size != (policy.resize, policy.resize):
        img, changed = img.resize((policy.resize, policy.resize), Image.Resampling.BILINEAR), True
    pixels = np.asarray(img)
    if changed or _FORMAT_EXT.get(fmt or "") != policy.image_format:
        data = encode_image(img, policy.image_format)
    return ImageCheck(
        None,
        data=data,
        ext=policy.image_format,
        width=img.size[0],
        height=img.size[1],
        sha256=pixel_sha256(pixels),
        phash=phash64(pixels),
    )


def _face_crop(img: Image.Image, policy: IngestConfig) -> Image.Image | str:
    """``img`` cropped to its best face and resized to ``policy.face_size`` squared, or why not (a detail string)."""
    from engine.faces import crop_box, detect_faces, eye_angle

    face = detect_faces([np.asarray(img)])[0]
    if face is None:
        return "MTCNN found no face"
    if face.prob < policy.face_min_prob:
        return f"best face prob {face.prob:.6g} < face_min_prob {policy.face_min_prob}"
    if policy.face_align and face.landmarks is not None:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        img = img.rotate(eye_angle(face), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    box = crop_box(face.box, img.size[0], img.size[1], policy.face_margin)
    if box is None:
        return f"face box {tuple(round(v) for v in face.box)} outside image {img.size[0]}x{img.size[1]}"
    side = policy.face_size
    return img.crop(box).resize((side, side), Image.Resampling.BILINEAR)


def encode_image(img: Image.Image, image_format: str) -> bytes:
    """Deterministic PNG (or JPEG quality 95) bytes of ``img``."""
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pixel_sha256(pixels: npt.NDArray[np.uint8]) -> str:
    """Hex sha256 over the shape and bytes of a uint8 pixel array."""
    h = hashlib.sha256(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> npt.NDArray[np.float64]:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return np.asarray(m, dtype=np.float64)


def phash64(pixels: npt.NDArray[np.uint8]) -> int:
    """64-bit DCT perceptual hash (as in ``imagehash.phash``): grey 32x32, 2-D DCT, 8x8 low band > its median."""
    img = Image.fromarray(pixels)
    if img.mode != "L":
        img = img.convert("L")
    small = np.asarray(img.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_matrix()
    low = (d @ small @ d.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def decode_pixels(data: bytes) -> npt.NDArray[np.uint8]:
    """The one image decoder (ingest, score, train, evaluate, curation): pixels of an encoded image (PNG, JPEG,
    anything Pillow reads), upright and 8-bit as :func:`upright_8bit` makes them.

    Returns:
        uint8 array of shape (H, W) or (H, W, 3).

    Raises:
        SourceFormatError: the bytes are not a decodable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SourceFormatError(
            f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {exc}; "
            "re-run ingest, which quarantines undecodable files"
        ) from None
    upright = upright_8bit(img)
    if isinstance(upright, str):
        raise SourceFormatError(f"cannot map image to 8 bits: {upright}; re-run ingest, which quarantines it")
    return np.asarray(upright, dtype=np.uint8)


def upright_8bit(img: Image.Image) -> Image.Image | str:
    """``img`` turned upright by its EXIF orientation, in mode ``L`` or ``RGB``; or, for a grey image whose value
    range does not say how to map it to 8 bits, why not (ingest quarantines it as ``ambiguous_range``).

    Grey modes become ``L`` by :func:`grey_to_8bit` (16-bit and 32-bit integer, float); ``1`` / ``LA`` are
    converted; every other mode (``P``, ``RGBA``, ``CMYK`` ...) becomes ``RGB`` (alpha dropped).
    """
    if img.getexif().get(0x0112, 1) != 1:  # orientation tag set: rotate the pixels upright
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode.startswith("I") or mode == "F":
        grey = grey_to_8bit(np.asarray(img), mode)
        return grey if isinstance(grey, str) else Image.fromarray(grey, mode="L")
    return img.convert("L" if mode in ("1", "LA", "La") else "RGB")


def grey_to_8bit(values: npt.NDArray[np.generic], mode: str) -> npt.NDArray[np.uint8] | str:
    """8-bit grey pixels of a wide grey image (Pillow mode ``I;16*``, ``I`` or ``F``), or why they cannot be made.

    The rule, by bit depth where the mode states it and by the pixels' actual range where it does not:

    - ``I;16*`` (16-bit integer): scaled by 1/257 (65535 → 255) and rounded.
    - ``I`` (32-bit integer, e.g. a TIFF saved from an int32 array): values within 0..255 are 8-bit values and kept;
      values within 0..65535 (some above 255) are 16-bit values, scaled by 1/257; a negative value or one above
      65535 is ambiguous (which bit depth?) and gives a reason instead.
    - ``F`` (32-bit float, e.g. a TIFF saved by numpy or scikit-image): values within [0, 1] are scaled by 255 (the
      float image convention); values within [0, 255] (some above 1) are kept; NaN, infinity, a negative value or
      one above 255 gives a reason instead. A 0..255 float image whose every value is at most 1 (all but black) is
      read on the [0, 1] scale: the two cannot be told apart.

    Returns:
        (H, W) uint8, rounded to nearest; or a one-line reason naming the mode and the range found.
    """
    v = np.asarray(values, dtype=np.float64)
    if mode.startswith("I;16"):
        scaled = v / 257.0
    else:
        if not np.isfinite(v).all():
            return f"{mode} grey image holds NaN or infinite values; save it as 8- or 16-bit"
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        found = f"values in [{lo:.6g}, {hi:.6g}]"
        if mode == "F":
            if lo < 0 or hi > 255:
                return f"float grey image with {found}, neither [0, 1] nor [0, 255]; rescale it to one of them"
            scaled = v * 255.0 if hi <= 1.0 else v
        else:
            if lo < 0 or hi > 65535:
                return f"32-bit integer grey image with {found}, neither 8- nor 16-bit values; save it as 8 or 16 bits"
            scaled = v / 257.0 if hi > 255 else v
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
