"""Pure parts of the round report and of label-issue curation: rebinning, gallery top-k, HTML, folds, cleanlab."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from engine.config import flatten, load_config
from engine.errors import ConfigError
from engine.io import fs
from engine.plots import rebin
from engine.products.report.galleries import gallery_candidates, merge_candidates, thumbnail_png
from engine.products.report.markup import fill_thumbnails, html_table
from engine.stages.curation import assign_folds, issues_table
from engine.stored import config_from_flat, open_round


def test_rebin_sums_fine_bins_exactly():
    fine = np.arange(2 * 1000).reshape(2, 1000)
    coarse = rebin(fine, 50)
    assert coarse.shape == (2, 50)
    assert coarse[0, 0] == sum(range(20))
    assert coarse[1, 49] == sum(range(1980, 2000))
    assert coarse.sum() == fine.sum()
    assert rebin(np.ones((1, 10), np.int64), 3).tolist() == [[3, 4, 3]]


def _score_fixture(tmp_path):
    """One shard: 8 pool rows of 2 classes, 3 selected; hidden labels for all but one row."""
    keys = [f"k{i}" for i in range(8)]
    pred = [0, 0, 0, 0, 1, 1, 1, 1]
    conf = [0.9, 0.8, 0.55, 0.4, 0.95, 0.7, 0.65, 0.3]
    true = [0, 1, 0, 0, 0, 1, -1, 1]
    part, manifest, sel = tmp_path / "part.parquet", tmp_path / "m.parquet", tmp_path / "sel.parquet"
    fs.write_parquet(
        str(part),
        pa.table({"key": keys, "pred": pa.array(pred, pa.int16()), "conf": pa.array(conf, pa.float32())}),
    )
    fs.write_parquet(str(manifest), pa.table({"key": keys, "label": pa.array(true, pa.int16())}))
    fs.write_parquet(
        str(sel),
        pa.table({"key": ["k0", "k1", "k4", "x9"], "shard": ["s-000000", "s-000000", "s-000000", "s-000001"]}),
    )
    return {"part": str(part), "manifest": str(manifest), "selection": str(sel), "shard": "s-000000"}


def test_gallery_candidates_per_kind_and_class(tmp_path):
    item = _score_fixture(tmp_path)
    out = gallery_candidates(item, thresholds=np.array([0.6, 0.9]), k=2, num_classes=2)
    got = {}
    for kind, c, key in zip(out["kind"], out["cls"], out["key"], strict=True):
        got.setdefault((kind, c), []).append(key)
    assert got == {
        ("confident", 0): ["k0", "k1"],
        ("confident", 1): ["k4"],
        ("above", 0): ["k1", "k0"],
        ("above", 1): ["k4"],
        ("below", 0): ["k2", "k3"],  # not selected and under 0.6, highest first
        ("below", 1): ["k5", "k6"],  # under 0.9; k7 cut by k=2
        ("wrong", 0): ["k1"],  # selected k1: pred 0, true 1
        ("wrong", 1): ["k4"],
    }
    assert set(out["shard"]) == {"s-000000"}


def test_merge_candidates_keeps_global_top_k_with_key_ties():
    a = {"kind": ["confident", "above"], "cls": [0, 0], "key": ["b", "b"], "conf": [0.9, 0.9], "true": [-1, -1],
         "shard": ["s1", "s1"]}  # fmt: skip
    b = {"kind": ["confident", "confident", "above"], "cls": [0, 0, 0], "key": ["a", "c", "c"],
         "conf": [0.9, 0.95, 0.6], "true": [-1, -1, -1], "shard": ["s2", "s2", "s2"]}  # fmt: skip
    g = merge_candidates([a, b], k=2)
    assert [x["key"] for x in g[("confident", 0)]] == ["c", "a"]
    assert [x["key"] for x in g[("above", 0)]] == ["c", "b"]


def test_html_table_escapes_and_fill_thumbnails_replaces_placeholders():
    t = html_table(["a<b"], [["<script>"]])
    assert "<script>" not in t and "&lt;script&gt;" in t
    png = thumbnail_png(_png(200, 100))
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (96, 48)
    body = fill_thumbnails('<img src="@@thumb:k&amp;1@@"><img src="@@thumb:gone@@">', {"k&1": png})
    assert "@@" not in body and body.count("data:image/png;base64,") == 2


def _png(w, h):
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_assign_folds_is_stratified_and_deterministic():
    keys = [f"k{i:03d}" for i in range(50)]
    labels = np.array([0] * 20 + [1] * 23 + [2] * 7)
    f = assign_folds(keys, labels, 5, seed=3)
    assert np.array_equal(f, assign_folds(list(keys), labels.copy(), 5, seed=3))
    for c, n in ((0, 20), (1, 23), (2, 7)):
        counts = np.bincount(f[labels == c], minlength=5)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert not np.array_equal(f, assign_folds(keys, labels, 5, seed=4))


def test_find_issues_flags_the_flipped_labels():
    pytest.importorskip("cleanlab")
    from engine.stages.curation import find_issues

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    probs = np.full((120, 4), 0.02)
    probs[np.arange(120), y] = 0.94  # class 3 never given: dropped before cleanlab
    flipped = np.array([3, 50, 90])
    y_given = y.copy()
    y_given[flipped] = (y[flipped] + 1) % 3
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    is_issue, quality = find_issues(y_given, probs, filter_by="prune_by_noise_rate")
    assert np.flatnonzero(is_issue).tolist() == flipped.tolist()
    assert quality[flipped].max() < quality[~is_issue].min()
    t = issues_table([f"k{i}" for i in range(120)], ["s"] * 120, y_given, probs.astype(np.float32),
                     np.zeros(120, np.int64), is_issue, quality, ["A", "B", "C", "D"])  # fmt: skip
    assert t.num_rows == 3
    assert t["quality"].to_numpy().tolist() == sorted(t["quality"].to_numpy().tolist())
    assert set(t["suggested_label"].to_pylist()) == {int(y[i]) for i in flipped}


def test_config_round_trips_through_flat_json_and_open_round_parses_paths(tmp_path):
    cfg = load_config(["conf/demo.yaml"], ["select.min_valence.Happiness=0.1", "report.gallery_per_class=3"])
    flat = json.loads(json.dumps(flatten(cfg)))
    back = config_from_flat(flat, root=str(tmp_path))
    assert back.storage.root == str(tmp_path)
    assert back.select == cfg.select and back.report == cfg.report and back.campaign == cfg.campaign
    camp = tmp_path / "campaigns" / "demo"
    (camp / "rounds" / "r002").mkdir(parents=True)
    fs.write_json(str(camp / "config.json"), flat)
    ref = open_round(str(camp / "rounds" / "r002") + "/", ["report.gallery_per_class=5"])
    assert (ref.root, ref.campaign, ref.index) == (str(tmp_path), "demo", 2)
    assert ref.cfg.report.gallery_per_class == 5
    assert ref.layout.dir == str(camp / "rounds" / "r002")
    with pytest.raises(ConfigError, match="not a round directory"):
        open_round(str(camp))
    with pytest.raises(ConfigError, match=r"config\.json is missing"):
        open_round(str(tmp_path / "x" / "campaigns" / "c" / "rounds" / "r001"))
