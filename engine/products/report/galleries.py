"""Image galleries of the report: per-class top-k candidates found one Ray task per score part (never the score
table on the driver), then only the winning images fetched and thumbnailed, one task per shard."""

from __future__ import annotations

import functools
import html
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc
import pyarrow.dataset as pads

from engine.config import ReportConfig
from engine.io import fs
from engine.products.report.markup import finite, fmt, placeholder
from engine.stored import RoundRef

log = logging.getLogger(__name__)


GALLERIES: dict[str, str] = {
    "confident": "selected, highest confidence",
    "above": "selected, just above the threshold",
    "below": "rejected, just below the threshold",
    "wrong": "selected but wrong (hidden ground truth), most confident",
}
"""Gallery kinds, in display order, with their captions."""


THUMB_PX = 96
"""Longest side of an inlined thumbnail, in pixels (smaller images are kept as they are)."""


class ImageRequests:
    """Thumbnails the report needs: shard → keys; the HTML holds a placeholder per key until they are fetched."""

    def __init__(self) -> None:
        self.wanted: dict[str, set[str]] = {}

    def tag(self, shard: str, key: str, caption: str) -> str:
        self.wanted.setdefault(shard, set()).add(key)
        return (
            f'<figure><img src="{placeholder(key)}" alt="{html.escape(key)}" title="{html.escape(key)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )


def gallery_candidates(
    item: dict[str, Any], *, thresholds: npt.NDArray[np.float64], k: int, num_classes: int
) -> dict[str, Any]:
    """Per-class top-k of one score part for every gallery kind (runs in a Ray task).

    Args:
        item: ``part`` (score parquet), ``shard``, ``manifest`` (manifest part), ``selection`` (selection parquet).
        thresholds: (C,) per-class thresholds (inf = never).
        k: rows kept per (kind, class).

    Returns:
        Column lists ``kind, cls, key, conf, true, shard`` of at most 4 x C x k rows.
    """
    s = fs.read_parquet(item["part"], columns=["key", "pred", "conf"])
    keys = s["key"].to_pylist()
    pred = s["pred"].to_numpy().astype(np.int64)
    conf = s["conf"].to_numpy().astype(np.float64)
    sel = _selected_keys(item["selection"], item["shard"]) if item.get("selection") else set()
    selected = np.array([x in sel for x in keys], dtype=bool)
    m = fs.read_parquet(item["manifest"], columns=["key", "label"])
    truth = dict(zip(m["key"].to_pylist(), m["label"].to_pylist(), strict=True))
    true = np.array([truth.get(x, -1) for x in keys], dtype=np.int64)
    keys_arr = np.array(keys, dtype=object)
    masks = {
        "confident": (selected, -1.0),
        "above": (selected, 1.0),
        "below": (~selected & (conf < thresholds[pred]), -1.0),
        "wrong": (selected & (true >= 0) & (true != pred), -1.0),
    }
    out: dict[str, list[Any]] = {"kind": [], "cls": [], "key": [], "conf": [], "true": [], "shard": []}
    for kind, (mask, sign) in masks.items():
        for c in range(num_classes):
            idx = np.flatnonzero(mask & (pred == c))
            idx = idx[np.lexsort((keys_arr[idx], sign * conf[idx]))][:k]
            out["kind"] += [kind] * len(idx)
            out["cls"] += [c] * len(idx)
            out["key"] += [keys[i] for i in idx]
            out["conf"] += conf[idx].tolist()
            out["true"] += true[idx].tolist()
            out["shard"] += [item["shard"]] * len(idx)
    return out


def merge_candidates(rows: Sequence[dict[str, Any]], k: int) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The global top-k per (kind, class) from per-shard candidates (same order as :func:`gallery_candidates`)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        for i in range(len(r["key"])):
            groups.setdefault((r["kind"][i], int(r["cls"][i])), []).append(
                {"key": r["key"][i], "conf": float(r["conf"][i]), "true": int(r["true"][i]), "shard": r["shard"][i]}
            )
    for (kind, _), g in groups.items():
        sign = 1.0 if kind == "above" else -1.0
        g.sort(key=lambda x: (sign * x["conf"], x["key"]))
        del g[k:]
    return groups


def _selected_keys(selection: str, shard: str) -> set[str]:
    filesystem, path = fs.resolve(selection)
    t = pads.dataset(path, format="parquet", filesystem=filesystem).to_table(
        columns=["key"], filter=pc.field("shard") == shard
    )
    return set(t["key"].to_pylist())


def gallery_section(ref: RoundRef, names: list[str], rc: ReportConfig, images: ImageRequests) -> str:
    from engine.partition_rule import load_rule
    from engine.runtime import ray_started
    from engine.stages.score import list_shards

    ray = ray_started()

    lay = ref.layout
    thr = np.array([finite(v, np.inf) for v in fs.read_json(lay.thresholds)["thresholds"]], dtype=np.float64)
    sel = lay.selection if fs.exists(lay.selection) else None
    items = [
        {"shard": s.name, "part": lay.score_part(s.name), "manifest": s.manifest, "selection": sel}
        for s in list_shards(ref.root, load_rule(ref.root, ref.campaign).pool_sources)
        if fs.exists(lay.score_part(s.name))
    ]
    kwargs: dict[str, Any] = {"thresholds": thr, "k": rc.gallery_per_class, "num_classes": len(names)}
    rows = (
        list(
            ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            .map(functools.partial(_candidates_row, **kwargs))
            .iter_rows()
        )
        if items
        else []
    )
    groups = merge_candidates(rows, rc.gallery_per_class)
    has_truth = fs.read_json(lay.quality).get("has_ground_truth", False)
    out = [
        "<section><h2>Galleries</h2><p>Per class and kind, up to "
        f"{rc.gallery_per_class} pool images with the teacher's confidence"
        + ("; <i>true</i> is the hidden ground-truth label" if has_truth else "")
        + ".</p>"
    ]
    for c, n in enumerate(names):
        blocks, empty = [], []
        for kind, caption in GALLERIES.items():
            g = groups.get((kind, c), [])
            if kind == "wrong" and not has_truth:
                continue
            if not g:
                empty.append(caption)
                continue
            figs = "".join(images.tag(x["shard"], x["key"], _gallery_caption(x, kind, names)) for x in g)
            blocks.append(f"<h4>{html.escape(caption)}</h4><div class='gallery'>{figs}</div>")
        if empty:
            blocks.append(f"<p class='empty'>no image: {html.escape('; '.join(empty))}</p>")
        out.append(f"<h3>{html.escape(n)} (threshold {fmt(finite(thr[c]))})</h3>" + "".join(blocks))
    out.append("</section>")
    return "".join(out)


def _gallery_caption(x: dict[str, Any], kind: str, names: list[str]) -> str:
    truth = f" · true {html.escape(names[x['true']])}" if kind == "wrong" and x["true"] >= 0 else ""
    return f"{x['conf']:.3f}{truth}"


def _candidates_row(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return gallery_candidates(item, **kwargs)


def fetch_thumbnails(root: str, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    """PNG thumbnails (longest side <= THUMB_PX) of the wanted keys, one Ray task per shard."""
    from engine.runtime import ray_started

    if not wanted:
        return {}
    ray = ray_started()
    items = [{"shard": s, "keys": sorted(ks)} for s, ks in sorted(wanted.items())]
    out: dict[str, bytes] = {}
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(functools.partial(_thumbs_row, root=root))
    for r in ds.iter_rows():
        out.update(zip(r["keys"], r["pngs"], strict=True))
    return out


def _thumbs_row(item: dict[str, Any], *, root: str) -> dict[str, Any]:
    from engine.io.tars import read_images
    from engine.layout import shard_tar

    got = read_images(shard_tar(root, item["shard"]), set(item["keys"]))
    return {"keys": list(got), "pngs": [thumbnail_png(b) for b in got.values()]}


def thumbnail_png(data: bytes, max_px: int = THUMB_PX) -> bytes:
    """Encoded image → PNG bytes whose longest side is at most ``max_px`` (aspect kept, never enlarged)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        img = im.convert("L") if im.mode in ("L", "I;16", "1") else im.convert("RGB")
    if max(img.size) > max_px:
        img.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
