"""Per-shard export on a hand-built storage root: rows, lineage columns and files of each format."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pytest
from PIL import Image

from engine.io import fs
from engine.io.tars import read_members
from engine.products.export import export_shard
from engine.schemas import SAMPLE_SCHEMA, SELECTION_SCHEMA

NAMES = ["Neutral", "Anger", "Happiness"]


def _png(v: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (48, 48), v).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "root"
    keys = ["src_a", "src_b", "src_c", "src_d"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, k in enumerate(keys):
            for name, data in ((f"{k}.json", b"{}"), (f"{k}.png", _png(40 * i))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    fs.write_bytes(str(root / "sources/src/shards/src-000000.tar"), buf.getvalue())
    fs.write_parquet(
        str(root / "sources/src/manifest/part-000000.parquet"),
        pa.table({"key": keys, "orig_path": [f"Train/{k}.png" for k in keys]}),
    )
    labelled = tmp_path / "labelled.parquet"
    fs.write_parquet(
        str(labelled),
        pa.table({"key": ["src_c"], "shard": ["src-000000"], "source": ["src"], "label": pa.array([1], pa.int16())}),
    )
    selection = tmp_path / "selection.parquet"
    sel = {
        "key": ["src_a", "src_d", "other_x"],
        "shard": ["src-000000", "src-000000", "other-000000"],
        "label": [2, 0, 0],
        "conf": [0.91, 0.77, 0.5],
        "weight": [1.0, 1.0, 1.0],
        "repeat": [1, 3, 1],
        "policy": ["fixed"] * 3,
        "round": [1, 1, 1],
    }
    fs.write_parquet(str(selection), pa.table(sel, schema=SELECTION_SCHEMA))
    return {"root": str(root), "labelled": str(labelled), "selection": str(selection)}


def _export(store, fmt, out):
    return export_shard(
        "src-000000",
        root=store["root"],
        fmt=fmt,
        out_dir=str(out),
        labelled=store["labelled"],
        selection=store["selection"],
        names=NAMES,
        thresholds=[0.7, None, 0.9],
        round_index=1,
    )


def test_read_images_returns_extension_and_bytes(store):
    got = read_members(store["root"] + "/sources/src/shards/src-000000.tar", {"src_b"})
    assert list(got) == ["src_b"] and got["src_b"] == ("png", _png(40))


def test_a_truncated_or_short_shard_is_an_error_naming_it(store, tmp_path):
    from engine.errors import EngineError
    from engine.io.tars import tar_bytes

    tar = store["root"] + "/sources/src/shards/src-000000.tar"
    with pytest.raises(EngineError, match=rf"^shard {tar} lacks 1 of the 2 images its manifest lists \(e.g. nope\)"):
        read_members(tar, {"src_b", "nope"})
    data = tar_bytes([(f"k{i}.png", _png(30 + i)) for i in range(3)])
    member = 512 + -(-len(_png(30)) // 512) * 512  # header + padded data of the first member
    at_boundary, mid_member = tmp_path / "a.tar", tmp_path / "b.tar"
    at_boundary.write_bytes(data[: 2 * member])  # two whole members: tarfile reads a shorter tar, silently
    mid_member.write_bytes(data[: member + 700])  # cut inside the second member's data
    rebuild = "re-ingest its source with --set storage.on_existing=overwrite (jobs/ingest.py)"
    with pytest.raises(EngineError) as err:
        read_members(str(at_boundary), {"k0", "k1", "k2"})
    assert str(err.value) == (
        f"shard {at_boundary} lacks 1 of the 3 images its manifest lists (e.g. k2): it is truncated or damaged; "
        + rebuild
    )
    with pytest.raises(EngineError) as err:
        read_members(str(mid_member), {"k0", "k1", "k2"})
    assert str(err.value) == f"shard {mid_member} cannot be read (ReadError: unexpected end of data); {rebuild}"


def test_export_shard_rows_carry_lineage(store, tmp_path):
    res = _export(store, "imagefolder", tmp_path / "out")
    assert res["rows"] == 3 and res["counts"] == {"pseudo|Happiness": 1, "pseudo|Neutral": 1, "labelled|Anger": 1}
    t = fs.read_parquet(res["part"])
    assert t.schema == SAMPLE_SCHEMA
    rows = {r["key"]: r for r in t.to_pylist()}
    assert list(rows) == ["src_a", "src_c", "src_d"]
    a, c, d = rows["src_a"], rows["src_c"], rows["src_d"]
    assert (a["label_name"], a["origin"], a["policy"], a["round"]) == ("Happiness", "pseudo", "fixed", 1)
    assert a["confidence"] == pytest.approx(0.91) and a["threshold"] == pytest.approx(0.9)
    assert (d["label_name"], d["repeat"], d["threshold"]) == ("Neutral", 3, pytest.approx(0.7))
    assert (c["origin"], c["confidence"], c["threshold"], c["policy"]) == ("labelled", None, None, None)
    assert c["orig_path"] == "Train/src_c.png" and c["source"] == "src" and c["shard"] == "src-000000"
    assert fs.read_bytes(str(tmp_path / "out" / "Anger" / "src_c.png")) == _png(80)
    assert a["file_name"] == "Happiness/src_a.png"


def test_export_shard_webdataset_tar_members(store, tmp_path):
    res = _export(store, "webdataset", tmp_path / "wds")
    ((rel, digest),) = res["digests"].items()
    assert rel == "shards/curated-src-000000.tar" and len(digest) == 64
    with tarfile.open(tmp_path / "wds" / rel) as tar:
        names = tar.getnames()
        assert names == [f"{k}.{e}" for k in ("src_a", "src_c", "src_d") for e in ("png", "cls", "json")]
        assert tar.extractfile("src_d.cls").read() == b"0"
        assert all(m.mtime == 0 for m in tar.getmembers())


def test_export_shard_csv_layout(store, tmp_path):
    res = _export(store, "csv", tmp_path / "csv")
    files = sorted(r["file_name"] for r in fs.read_parquet(res["part"]).to_pylist())
    assert files == ["images/src_a.png", "images/src_c.png", "images/src_d.png"]
    assert (tmp_path / "csv" / "images" / "src_d.png").read_bytes() == _png(120)
