"""Ingest with ``ingest.detect_faces``: real FER2013 faces are cropped to face_size, a blank image is ``no_face``."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.config import IngestConfig, SourceConfig
from engine.layout import SourceLayout
from tests.fixtures import face, ingest_stage, write_file

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None,
    reason="facenet_pytorch not installed (.venv/bin/pip install --no-deps facenet-pytorch)",
)


def _png160(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).resize((160, 160), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def test_blank_image_is_quarantined_no_face(ray_local, fer2013_dir, tmp_path):
    src_dir = tmp_path / "faces"
    for i, rel in enumerate(("angry/fer0.png", "angry/fer1.png", "fear/fer2.png")):
        write_file(src_dir / rel, _png160(np.asarray(Image.open(io.BytesIO(face(i))))))
    write_file(src_dir / "neutral/blank.png", _png160(np.full((48, 48), 128, np.uint8)))
    source = SourceConfig(name="faces", format="image_folder", path=str(src_dir))
    cfg = IngestConfig(samples_per_shard=10, detect_faces=True, face_size=64)

    res = ingest_stage(str(tmp_path / "root"), source, cfg).execute()

    c = res.counts
    assert (c["inputs"], c["kept"], c["quarantined"], c["by_reason"]) == (4, 3, 1, {"no_face": 1})
    lay = SourceLayout(str(tmp_path / "root"), "faces")
    q = pq.read_table(lay.quarantine).to_pylist()
    assert [(r["orig_path"], r["reason"], r["detail"]) for r in q] == [
        ("neutral/blank.png", "no_face", "MTCNN found no face")
    ]
    manifest = pq.read_table(lay.manifest_dir)
    assert sorted(manifest["orig_path"].to_pylist()) == ["angry/fer0.png", "angry/fer1.png", "fear/fer2.png"]
    assert set(manifest["width"].to_pylist()) == {64} and set(manifest["height"].to_pylist()) == {64}
