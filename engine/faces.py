"""Face detection for ingest: MTCNN (facenet-pytorch, CPU) boxes over numpy images and the margin crop box."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import MissingExtra

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps facenet-pytorch"
"""facenet-pytorch pins old torch versions; --no-deps keeps the installed torch (its wheel ships the MTCNN weights)."""


@dataclass(frozen=True, slots=True)
class Face:
    """The most confident face of one image: ``box`` (left, top, right, bottom) in float pixels, may exceed the
    image; ``prob`` in [0, 1]; ``landmarks`` MTCNN's five (x, y) points: left eye, right eye (as seen in the image),
    nose, mouth left, mouth right."""

    box: tuple[float, float, float, float]
    prob: float
    landmarks: tuple[tuple[float, float], ...] | None = None


def eye_angle(face: Face) -> float:
    """Angle in degrees of the line from the left to the right eye landmark (image y axis pointing down): positive
    when the right eye is lower. ``PIL.Image.rotate(eye_angle(face))`` (counter-clockwise) levels the eyes."""
    if face.landmarks is None:
        raise ValueError("this face has no landmarks")
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def require_detector() -> type:
    """The facenet-pytorch ``MTCNN`` class; raises MissingExtra (with the install line) when it is not installed."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise MissingExtra(
            f"ingest.detect_faces needs facenet-pytorch ({exc}); install it with `{INSTALL_HINT}` "
            "or set ingest.detect_faces=false"
        ) from exc
    return MTCNN  # type: ignore[no-any-return]


@lru_cache(maxsize=1)
def _mtcnn() -> Any:
    """One CPU MTCNN per process (so once per Ray worker, reused by every task it runs)."""
    log.info("loading MTCNN (facenet-pytorch, CPU)")
    return require_detector()(keep_all=True, device="cpu", select_largest=False)


def detect_faces(images: Sequence[npt.NDArray[np.uint8]]) -> list[Face | None]:
    """Most confident MTCNN face of each image (None when MTCNN finds none).

    Args:
        images: uint8 arrays (H, W) grey or (H, W, 3) RGB; sizes may differ (images of one size are detected in
            one batch).

    Returns:
        One ``Face`` or None per image, in input order. Probabilities are MTCNN's own (P-, R-, O-net cascade with
        its default stage thresholds 0.6/0.7/0.7); apply a stricter minimum with ``Face.prob``.
    """
    import torch

    rgb = [np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im for im in images]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(rgb):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"detect_faces: image {i} has shape {im.shape} dtype {im.dtype}; want uint8 HxW or HxWx3")
        by_shape.setdefault(im.shape, []).append(i)
    out: list[Face | None] = [None] * len(rgb)
    mtcnn = _mtcnn()
    with torch.inference_mode():
        for idx in by_shape.values():
            boxes, probs, points = mtcnn.detect(np.stack([rgb[i] for i in idx]), landmarks=True)
            for i, b, p, pts in zip(idx, boxes, probs, points, strict=True):
                if b is None or len(b) == 0:
                    continue
                best = int(np.argmax(np.asarray(p, dtype=np.float64)))
                marks = tuple((float(x), float(y)) for x, y in pts[best]) if pts is not None else None
                out[i] = Face(tuple(float(v) for v in b[best]), float(p[best]), marks)  # type: ignore[arg-type]
    return out


def crop_box(
    face_box: tuple[float, float, float, float], width: int, height: int, margin: float
) -> tuple[int, int, int, int] | None:
    """Integer crop (left, top, right, bottom) for a detected face: a square centred on the box, side
    ``max(box w, box h) * (1 + 2 * margin)``, clipped to the ``width`` x ``height`` image (so it is not square where
    the face touches the border). None when nothing of it lies inside the image."""
    left, top, right, bottom = face_box
    side = max(right - left, bottom - top) * (1 + 2 * margin)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0, y0 = max(0, math.floor(cx - side / 2)), max(0, math.floor(cy - side / 2))
    x1, y1 = min(width, math.ceil(cx + side / 2)), min(height, math.ceil(cy + side / 2))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1
