"""Per-shard export on a hand-built storage root: rows, lineage columns and files of each format."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from engine.io import fs
from engine.io.tars import read_members
from engine.products.datasheet import dataset_card
from engine.products.export import export_shard, hf_data_file
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


def _export(store, fmt, out, data_file=None):
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
        data_file=data_file,
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


def _sheet(samples: int) -> dict:
    """A datasheet as :func:`engine.products.datasheet.datasheet` writes it, for a 3-sample export."""
    zero = dict.fromkeys(NAMES, 0)
    return {
        "format": "hf_parquet",
        "samples": samples,
        "campaign": "demo",
        "round": 1,
        "label_space": {"name": "toy3", "classes": NAMES},
        "counts": {
            "per_class": {"labelled": {**zero, "Anger": 1}, "pseudo": {**zero, "Neutral": 1, "Happiness": 1}},
            "per_source": {"src": {"labelled": 1, "pseudo": 2}},
            "total": {"labelled": 1, "pseudo": 2},
        },
        "thresholds": {"policy": "fixed", "params": {"tau": 0.7}, "by_class": {"Neutral": 0.7, "Anger": None,
                                                                               "Happiness": 0.9}},
        "selection": {
            "pool": 3, "selected": 2, "mask_rate": 0.6667, "precision": None,
            "steps": {"passed_threshold": {**zero, "Neutral": 1, "Happiness": 1},  # key-sorted, as in quality.json
                      "pool_pred": {**zero, "Neutral": 1, "Happiness": 2}},
            "excluded": {"leakage": 0, "labelled": 1},
            "config": {"cap_per_class": 10, "floor_per_class": 0, "max_disagreement": None, "min_valence": {}},
        },
        "lineage": {"sources": {"src": {"format": "fer2013", "path": "/data/src", "ingest_fingerprint": "ab12"}},
                    "partition_fingerprint": "cd34", "teacher": None, "student": None,
                    "stages": {"select": "ef56"}},
        "files": {"data/train-00000-of-00001.parquet": "00ff"},
    }  # fmt: skip


def _front_matter(card: str) -> dict:
    head, sep, _ = card.removeprefix("---\n").partition("\n---\n")
    assert card.startswith("---\n") and sep
    return yaml.safe_load(head)


def test_dataset_card_front_matter_names_the_classes_and_the_data_files():
    card = dataset_card(_sheet(3), split="train", path="data/train-*")
    front = _front_matter(card)
    assert front["license"] == "other" and front["task_categories"] == ["image-classification"]
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    features = {f["name"]: f["dtype"] for f in front["dataset_info"]["features"]}
    assert features["image"] == "image"
    assert features["label"] == {"class_label": {"names": {"0": "Neutral", "1": "Anger", "2": "Happiness"}}}
    assert list(features)[:4] == ["image", "label", "label_name", "key"] and features["confidence"] == "float32"
    body = card.split("\n---\n", 1)[1]
    assert "## How the pseudo-labels were chosen" in body and "`fixed`" in body
    assert "| Happiness | 0 | 1 | 0.9000 |" in body  # the datasheet's counts per class
    assert "| class | pool_pred | passed_threshold |\n" in body and "| Happiness | 2 | 1 |\n" in body  # funnel order
    assert "(`select`: cap_per_class=10, floor_per_class=0)" in body  # settings that are set
    assert "- stage `select` fingerprint `ef56`" in body


def test_export_shard_data_file_is_for_hf_parquet_only(store, tmp_path):
    with pytest.raises(ValueError, match="data_file is given for hf_parquet and only for it"):
        _export(store, "hf_parquet", tmp_path / "a")
    with pytest.raises(ValueError, match="data_file is given for hf_parquet and only for it"):
        _export(store, "csv", tmp_path / "b", data_file=hf_data_file(0, 1))


def test_export_shard_hf_parquet_loads_with_datasets(store, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    assert hf_data_file(3, 12) == "data/train-00003-of-00012.parquet"
    res = _export(store, "hf_parquet", out, data_file=hf_data_file(0, 1))
    ((rel, digest),) = res["digests"].items()
    assert rel == "data/train-00000-of-00001.parquet" and len(digest) == 64
    (out / "README.md").write_text(dataset_card(_sheet(res["rows"]), split="train", path="data/train-*"))
    cache = str(tmp_path / "cache")
    by_files = datasets.load_dataset("parquet", data_files=str(out / rel), split="train", cache_dir=cache)
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=cache)  # configs + dataset_info of README.md
    for ds in (by_files, by_card):
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["label"] == datasets.ClassLabel(names=NAMES)
        assert ds["key"] == ["src_a", "src_c", "src_d"]
    rows = {r["key"]: r for r in by_files}
    for key, value in (("src_a", 0), ("src_c", 80), ("src_d", 120)):
        want = np.array(Image.open(io.BytesIO(_png(value))))
        assert np.array_equal(np.array(rows[key]["image"]), want)
    a, c = rows["src_a"], rows["src_c"]
    assert (a["label"], a["label_name"], a["origin"], a["policy"]) == (2, "Happiness", "pseudo", "fixed")
    assert a["confidence"] == pytest.approx(0.91) and a["threshold"] == pytest.approx(0.9)
    assert (c["label"], c["origin"], c["confidence"], c["orig_path"]) == (1, "labelled", None, "Train/src_c.png")
    assert a["file_name"] == "data/train-00000-of-00001.parquet#src_a.png"
    assert fs.read_parquet(res["part"])["file_name"].to_pylist()[0] == a["file_name"]
