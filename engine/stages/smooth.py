"""Score-stage step: per-video smoothing of the raw score parts on Ray Data (CFC-SP smooth predicting).

Distributed in three passes, so no video and no shard is ever gathered on the driver:

1. per shard (Ray task): the raw part's rows whose manifest row has a ``group`` and a ``frame`` become
   ``(vid = <source>/<group>, key, shard, frame, probs)`` rows;
2. ``groupby(vid).map_groups``: each video is smoothed by engine.smoothing.smooth_probs (videos may span shards);
3. ``groupby(shard).map_groups``: each shard's raw part gets its smoothed rows' probabilities (pred, conf, margin
   and entropy recomputed; branch probabilities, disagreement and valence/arousal stay the teacher's raw outputs) and
   is written as the final ``part-<shard>.parquet`` with its ``stats/<shard>.json``.

Shards without a video row are copied unchanged (with their stats). The driver only holds the list of shard names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import ScoreConfig
from engine.io import fs
from engine.layout import join
from engine.stats import ScoreStats


def smooth_shards(items: list[dict[str, str]], *, out_dir: str, cfg: ScoreConfig) -> int:
    """Write the smoothed final part and stats of every shard in ``items`` (``shard``, ``raw``, ``manifest``).

    Returns:
        The number of rows that belong to a video (and were smoothed).
    """
    import ray

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # one pyarrow block per shard, with its schema even when empty (an empty block without columns breaks the shuffle)
    video = ds.map_batches(_video_rows, batch_size=1, batch_format="pyarrow").materialize()
    n_video = video.count()
    done: set[str] = set()
    write_kwargs = {"items": {it["shard"]: it for it in items}, "out_dir": out_dir, "bins": cfg.hist_bins}
    if n_video:
        parts = max(1, min(len(items), 64))  # one shuffle partition per shard, at most 64
        smoothed = video.groupby("vid", num_partitions=parts).map_groups(
            _smooth_group, fn_kwargs={"method": cfg.smooth, "window": cfg.smooth_window}, batch_format="pyarrow"
        )
        written = smoothed.groupby("shard", num_partitions=parts).map_groups(
            _write_group, fn_kwargs=write_kwargs, batch_format="pyarrow"
        )
        done = {str(r["shard"]) for r in written.iter_rows()}
    rest = [it for it in items if it["shard"] not in done]
    if rest:
        copies = ray.data.from_items(rest, override_num_blocks=max(1, len(rest)))
        list(copies.map(_copy_shard, fn_kwargs={"out_dir": out_dir, "bins": cfg.hist_bins}).iter_rows())
    return int(n_video)


def _video_rows(batch: pa.Table) -> pa.Table:
    """The video rows (vid, key, shard, frame, probs) of the shard items in ``batch`` (raw part + manifest)."""
    tables = [_video_rows_of(item) for item in batch.to_pylist()]
    return pa.concat_tables(tables) if tables else _video_table([], [], [], [], np.zeros((0, 0), np.float32))


def _video_rows_of(item: dict[str, str]) -> pa.Table:
    if not fs.exists(item["raw"]):
        return _video_table([], [], [], [], np.zeros((0, 0), np.float32))
    raw = fs.read_parquet(item["raw"], columns=["key", "probs"])
    m = fs.read_parquet(item["manifest"], columns=["key", "group", "frame"])
    where = {k: i for i, k in enumerate(m["key"].to_pylist())}
    groups, frames = m["group"].to_pylist(), m["frame"].to_pylist()
    probs = _probs(raw)
    source = item["shard"].rsplit("-", 1)[0]
    keep, vids, keys, fr = [], [], [], []
    for i, key in enumerate(raw["key"].to_pylist()):
        j = where.get(key)
        if j is None or groups[j] is None or frames[j] is None:
            continue
        keep.append(i)
        vids.append(f"{source}/{groups[j]}")
        keys.append(key)
        fr.append(int(frames[j]))
    return _video_table(vids, keys, [item["shard"]] * len(keys), fr, probs[keep])


def _video_table(
    vids: list[str], keys: list[str], shards: list[str], frames: list[int], probs: np.ndarray
) -> pa.Table:
    return pa.table(
        {
            "vid": pa.array(vids, pa.string()),
            "key": pa.array(keys, pa.string()),
            "shard": pa.array(shards, pa.string()),
            "frame": pa.array(frames, pa.int64()),
            "probs": pa.array([p.tolist() for p in probs], pa.list_(pa.float32())),
        }
    )


def _smooth_group(table: pa.Table, *, method: str, window: int) -> pa.Table:
    from engine.smoothing import smooth_probs

    probs = _probs(table)
    out = smooth_probs(probs, table["frame"].to_numpy(), method=method, window=window)
    return pa.table(
        {
            "key": table["key"],
            "shard": table["shard"],
            "probs": pa.array([p.tolist() for p in out], pa.list_(pa.float32())),
        }
    )


def _write_group(table: pa.Table, *, items: dict[str, dict[str, str]], out_dir: str, bins: int) -> pa.Table:
    shard = str(table["shard"][0])
    smoothed = dict(zip(table["key"].to_pylist(), _probs(table), strict=True))
    raw = fs.read_parquet(items[shard]["raw"])
    probs = _probs(raw)
    for i, key in enumerate(raw["key"].to_pylist()):
        if key in smoothed:
            probs[i] = smoothed[key]
    _write_final(raw, probs, shard, out_dir, bins)
    return pa.table({"shard": [shard], "rows": pa.array([len(smoothed)], pa.int64())})


def _copy_shard(item: dict[str, str], *, out_dir: str, bins: int) -> dict[str, Any]:
    if not fs.exists(item["raw"]):
        fs.write_json(join(out_dir, "stats", f"{item['shard']}.json"), {"n": 0})
    else:
        raw = fs.read_parquet(item["raw"])
        _write_final(raw, _probs(raw), item["shard"], out_dir, bins)
    return {"shard": item["shard"]}


def _write_final(raw: pa.Table, probs: np.ndarray, shard: str, out_dir: str, bins: int) -> None:
    from engine.stages.score import score_columns

    c = probs.shape[1]
    table = raw.set_column(
        raw.schema.get_field_index("probs"), "probs", pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), c)
    )
    for name, values in score_columns(probs).items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    fs.write_parquet(join(out_dir, f"part-{shard}.parquet"), table.cast(raw.schema))
    fs.write_json(join(out_dir, "stats", f"{shard}.json"), ScoreStats.from_probs(probs, bins).to_json())


def _probs(table: pa.Table) -> np.ndarray:
    """(N, C) float32 copy of a table's ``probs`` list column (fixed-size or variable-size lists of equal length)."""
    col = table["probs"].combine_chunks()
    n = len(col)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(n, -1).copy() if n else np.zeros((0, 0), np.float32)
