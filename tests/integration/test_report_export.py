"""The shared tiny campaign (round 0 + round 1 on FER2013): report.html in headless Chromium, label issues, exports."""

from __future__ import annotations

import glob
import html
import io
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.io import fs
from engine.labels import get_label_space
from engine.layout import CampaignLayout

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def campaign(tiny_campaign):
    """The shared tiny campaign: tau 0 with a per-class cap (a non-empty selection and rejected rows whatever the
    2-epoch teacher predicts), label issues on (2 folds, 1 epoch)."""
    return tiny_campaign.cfg, tiny_campaign.root, tiny_campaign.state


def _expected(root: Path) -> dict[str, int]:
    lay = CampaignLayout(str(root), "demo")
    lab = pq.read_table(lay.partition_dir + "/labelled.parquet", columns=["key", "label"]).to_pylist()
    sel = pq.read_table(lay.round(1).selection, columns=["key", "label"]).to_pylist()
    out = {r["key"]: r["label"] for r in lab}
    assert not set(out) & {r["key"] for r in sel}
    out.update({r["key"]: r["label"] for r in sel})
    return out


def test_label_issues_written_for_the_labelled_set(campaign):
    _, root, _ = campaign
    lay = CampaignLayout(str(root), "demo").round(1)
    marker = fs.read_json(lay.dir + "/curation/_SUCCESS.json")
    labelled = pq.read_table(CampaignLayout(str(root), "demo").partition_dir + "/labelled.parquet")
    oof = pq.read_table(lay.dir + "/curation/oof_probs.parquet")
    issues = pq.read_table(lay.dir + "/curation/label_issues.parquet")
    assert marker["counts"]["labelled"] == labelled.num_rows == oof.num_rows
    assert sorted(oof["key"].to_pylist()) == sorted(labelled["key"].to_pylist())
    assert issues.num_rows == marker["counts"]["flagged"]
    assert issues.column_names[:7] == [
        "key", "shard", "given_label", "given_name", "suggested_label", "suggested_name", "quality"
    ]  # fmt: skip
    assert set(issues["key"].to_pylist()) <= set(labelled["key"].to_pylist())
    # Stratified 2-fold: per class, ceil(n_c / 2) rows in fold 0 and floor(n_c / 2) in fold 1.
    per_class = Counter(labelled["label"].to_pylist())
    folds = Counter(oof["fold"].to_pylist())
    assert folds == {0: sum((n + 1) // 2 for n in per_class.values()), 1: sum(n // 2 for n in per_class.values())}


def test_report_renders_in_chromium_and_is_logged_to_mlflow(campaign, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    from engine.products.report import rebuild_report
    from engine.tracking import Tracker, default_artifact_root, default_uri

    cfg, root, state = campaign
    lay = CampaignLayout(str(root), "demo").round(1)
    first = Path(lay.report).read_bytes()
    q = fs.read_json(lay.quality)
    k = cfg.report.gallery_per_class
    assert rebuild_report(lay.dir) == lay.report
    assert Path(lay.report).read_bytes() == first  # deterministic rebuild from committed files
    assert fs.exists(CampaignLayout(str(root), "demo").round(0).report)

    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(Path(lay.report).as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        galleries = page.evaluate(
            """() => [...document.querySelectorAll('h4')].filter(h => h.textContent.includes('highest confidence'))
                 .map(h => h.nextElementSibling.querySelectorAll('img').length)"""
        )
        kept = page.evaluate(
            """() => { const t = [...document.querySelectorAll('table')].find(t => [...t.querySelectorAll('th')]
                   .some(th => th.textContent === 'kept from'));
                 const i = [...t.querySelectorAll('th')].findIndex(th => th.textContent === 'kept from');
                 return [...t.querySelectorAll('tbody tr')].map(r => r.children[i].textContent) }"""
        )
        scroll_x = page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        page_height = page.evaluate("() => document.documentElement.scrollHeight")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == first.decode().count("<img ") and min(widths) > 0  # every image decoded
    assert headings == [
        "Thresholds",
        "Selection",
        "Confidence histograms",
        "Galleries",
        "Review by people",  # this round asked nobody: one line says so (test_review.py renders a batch)
        "Evaluation: student vs teacher",
        "Label issues in the labelled set",
        "Ingest: quarantine, duplicates and leakage",
    ]
    names = get_label_space("basic7").classes
    assert galleries == [min(k, q["per_class"][n]["selected"]) for n in names if q["per_class"][n]["selected"]]
    assert sum(q["per_class"][n]["selected"] for n in names) == q["selected"] > 0
    # threshold 0 and caps (10 per class, 1 x labelled): a class is capped when it kept fewer rows than passed
    expected = [
        ("—" if v["kept_from"] is None else f"{v['kept_from']:.3f}") + (" (capped)" if v["capped"] else "")
        for v in (q["per_class"][n] for n in names)
    ]
    assert kept == expected and any(v["capped"] for v in q["per_class"].values())
    assert all(v["capped"] == (v["selected"] < q["steps"]["passed_threshold"][n]) for n, v in q["per_class"].items())
    assert scroll_x
    from PIL import Image

    with Image.open(shot) as png:
        assert png.size == (1200, page_height)  # the full page, at the viewport's width
    assert f"mask rate {q['mask_rate']:.2%}" in first.decode()
    rule = fs.read_json(lay.thresholds)["rule"]
    assert rule.startswith(f"{cfg.threshold.policy}: ") and f"Rule: <code>{html.escape(rule)}</code>" in first.decode()

    tracker = Tracker(default_uri(str(root)), cfg.tracking.experiment, default_artifact_root(str(root)))
    assert "report.html" in tracker.list_artifacts(state["rounds"]["1"]["mlflow_run_id"])


@pytest.mark.parametrize("fmt", ["webdataset", "imagefolder", "csv"])
def test_export_reads_back_exactly_the_curated_set(campaign, tmp_path, fmt):
    import webdataset as wds

    from engine.products.export import export_round
    from engine.stored import open_round

    _, root, _ = campaign
    lay = CampaignLayout(str(root), "demo").round(1)
    expected = _expected(root)
    out = tmp_path / fmt
    sheet = export_round(open_round(lay.dir), fmt, str(out))
    if fmt == "webdataset":
        urls = sorted(glob.glob(str(out / "shards" / "*.tar")))
        got = {s["__key__"]: s["cls"] for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    elif fmt == "imagefolder":
        names = list(sheet["label_space"]["classes"])
        got = {p.stem: names.index(p.parent.name) for p in out.glob("*/*.png")}
    else:
        import csv

        names = list(sheet["label_space"]["classes"])
        with open(out / "list.csv", newline="") as fh:
            got = {Path(r["path"]).stem: names.index(r["label"]) for r in csv.DictReader(fh)}
            assert all((out / r).exists() for r in [f"images/{k}.png" for k in got])
    assert got == expected
    assert sheet["samples"] == len(expected)

    samples = pq.read_table(out / "samples.parquet").to_pylist()
    thr = fs.read_json(lay.thresholds)["thresholds_by_class"]
    sel = {r["key"]: r for r in pq.read_table(lay.selection).to_pylist()}
    manifest = pq.read_table(root / "sources/fer2013/manifest", columns=["key", "orig_path"]).to_pylist()
    orig = {r["key"]: r["orig_path"] for r in manifest}
    for r in samples:
        assert r["orig_path"] == orig[r["key"]] and r["round"] == 1
        if r["origin"] == "pseudo":
            assert r["threshold"] == pytest.approx(thr[r["label_name"]])
            assert r["confidence"] == pytest.approx(sel[r["key"]]["conf"]) and r["policy"] == "fixed"
        else:
            assert r["threshold"] is None and r["confidence"] is None
    assert sheet["counts"]["total"] == {"labelled": len(expected) - len(sel), "pseudo": len(sel)}
    assert sheet["lineage"]["stages"]["select"] == fs.read_json(lay.select_dir + "/_SUCCESS.json")["fingerprint"]
    assert (out / "datasheet.md").read_text().startswith("# Datasheet: demo round r001")


def test_hf_parquet_export_loads_with_datasets_as_the_curated_set(campaign, tmp_path):
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from engine.io.tars import read_members
    from engine.layout import shard_tar
    from engine.products.export import export_round
    from engine.stored import open_round

    _, root, _ = campaign
    camp = CampaignLayout(str(root), "demo")
    lay = camp.round(1)
    expected = _expected(root)
    out = tmp_path / "hf"
    sheet = export_round(open_round(lay.dir), "hf_parquet", str(out))
    lab = {r["key"]: r for r in pq.read_table(camp.labelled).to_pylist()}
    sel = {r["key"]: r for r in pq.read_table(lay.selection).to_pylist()}
    shards = sorted({r["shard"] for r in [*lab.values(), *sel.values()]})
    data = [f"data/train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(["README.md", "datasheet.json", "datasheet.md", "samples.csv", "samples.parquet", *data])
    assert fs.read_json(str(out / "datasheet.json")) == sheet and set(data) <= set(sheet["files"])

    cache = str(tmp_path / "hf_cache")
    ds = datasets.load_dataset("parquet", data_files=[str(out / f) for f in data], split="train", cache_dir=cache)
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=cache)  # README.md configs + features
    names = list(get_label_space("basic7").classes)
    for d in (ds, by_card):
        assert isinstance(d.features["image"], datasets.Image)
        assert d.features["label"] == datasets.ClassLabel(names=names)
        assert d.num_rows == sheet["samples"] == len(expected)
    assert dict(zip(ds["key"], ds["label"], strict=True)) == expected
    assert sorted(by_card["key"]) == sorted(expected)

    rows = {r["key"]: r for r in ds.select_columns([c for c in ds.column_names if c != "image"])}
    for key, r in rows.items():
        got = (r["origin"], r["label"], r["shard"], r["policy"], r["confidence"], r["weight"])
        if key in sel:
            s = sel[key]
            assert got == ("pseudo", s["label"], s["shard"], s["policy"], pytest.approx(s["conf"]), s["weight"])
        else:
            assert got == ("labelled", lab[key]["label"], lab[key]["shard"], None, None, 1.0)
        assert r["label_name"] == names[r["label"]] and r["round"] == 1
    # A few rows of each origin: decoded pixels and stored bytes equal the image in the source shard.
    picks = [i for o in ("labelled", "pseudo") for i in [j for j, v in enumerate(ds["origin"]) if v == o][:3]]
    assert len(picks) == 6
    raw = ds.cast_column("image", datasets.Image(decode=False))
    for i in picks:
        key, shard = ds[i]["key"], ds[i]["shard"]
        ext, source_bytes = read_members(shard_tar(str(root), shard), {key})[key]
        assert raw[i]["image"] == {"bytes": source_bytes, "path": f"{key}.{ext}"}
        with Image.open(io.BytesIO(source_bytes)) as img:
            assert np.array_equal(np.array(ds[i]["image"]), np.array(img))
    assert (out / "README.md").read_text().count("## How the pseudo-labels were chosen") == 1
