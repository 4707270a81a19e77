"""Score-stage step: per-video post-processing of the raw score parts on Ray Data — the ABAW2021 sequence
ensemble (``model.temporal`` members over per-frame features) and CFC-SP smooth predicting (``score.smooth``).

Distributed in three passes, so no video and no shard is ever gathered on the driver:

1. per shard (Ray task): the raw part's rows whose manifest row has a ``group`` and a ``frame`` become
   ``(vid = <source>/<group>, key, shard, frame, probs[, features])`` rows;
2. ``groupby(vid).map_groups``: each video (videos may span shards) gets the sequence ensemble of the teacher
   (engine.models.sequence.sequence_predict: probabilities = weighted mean of ``[cnn, *temporal]``, member
   probabilities kept), then the smoothing of engine.smoothing.smooth_probs;
3. ``groupby(shard).map_groups``: each shard's raw part gets its video rows' probabilities (pred, conf, margin and
   entropy recomputed) and is written as the final ``part-<shard>.parquet`` with its ``stats/<shard>.json``.

With a sequence teacher, rows outside any video are one-frame sequences (every row gets every member), the final
part's ``branch_probs`` are the members' probabilities with their ``disagreement``, and the raw ``features`` column
is dropped. Without one, branch probabilities, disagreement and valence/arousal stay the teacher's raw outputs.
Shards without a video row are only finalised (sequence members on single frames) or copied. The driver only holds
the list of shard names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import ScoreConfig
from engine.io import fs
from engine.layout import join, parse_shard, video_id
from engine.schemas import score_columns, score_table
from engine.stats import ScoreStats


def video_step(items: list[dict[str, str]], *, out_dir: str, cfg: ScoreConfig, sequence: str | None) -> int:
    """Write the final part and stats of every shard in ``items`` (``shard``, ``raw``, ``manifest``).

    Args:
        sequence: the teacher checkpoint when it carries sequence members (``model.temporal``), else None.

    Returns:
        The number of rows that belong to a video.
    """
    from engine.runtime import ray_started

    ray = ray_started()

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # one pyarrow block per shard, with its schema even when empty (an empty block without columns breaks the shuffle)
    video = ds.map_batches(
        _video_rows, fn_kwargs={"features": sequence is not None}, batch_size=1, batch_format="pyarrow"
    ).materialize()
    n_video = video.count()
    done: set[str] = set()
    finish = {"out_dir": out_dir, "bins": cfg.hist_bins, "sequence": sequence, "disagreement": cfg.disagreement}
    if n_video:
        from engine.runtime import task_shuffle

        parts = max(1, min(len(items), 64))  # one shuffle partition per shard, at most 64
        with task_shuffle():
            processed = video.groupby("vid", num_partitions=parts).map_groups(
                _video_group,
                fn_kwargs={"method": cfg.smooth, "window": cfg.smooth_window, "sequence": sequence},
                batch_format="pyarrow",
            )
            written = processed.groupby("shard", num_partitions=parts).map_groups(
                _write_group, fn_kwargs={"items": {it["shard"]: it for it in items}, **finish}, batch_format="pyarrow"
            )
            done = {str(r["shard"]) for r in written.iter_rows()}
    rest = [it for it in items if it["shard"] not in done]
    if rest:
        copies = ray.data.from_items(rest, override_num_blocks=max(1, len(rest)))
        list(copies.map(_copy_shard, fn_kwargs=finish).iter_rows())
    return int(n_video)


def _video_rows(batch: pa.Table, *, features: bool) -> pa.Table:
    """The video rows (vid, key, shard, frame, probs[, features]) of the shard items in ``batch``."""
    tables = [_video_rows_of(item, features) for item in batch.to_pylist()]
    return pa.concat_tables(tables) if tables else _video_table([], [], [], [], _EMPTY, _EMPTY if features else None)


_EMPTY = np.zeros((0, 0), np.float32)


def _video_rows_of(item: dict[str, str], features: bool) -> pa.Table:
    if not fs.exists(item["raw"]):
        return _video_table([], [], [], [], _EMPTY, _EMPTY if features else None)
    raw = fs.read_parquet(item["raw"], columns=["key", "probs", *(("features",) if features else ())])
    m = fs.read_parquet(item["manifest"], columns=["key", "group", "frame"])
    where = {k: i for i, k in enumerate(m["key"].to_pylist())}
    groups, frames = m["group"].to_pylist(), m["frame"].to_pylist()
    source = parse_shard(item["shard"])[0]
    keep, vids, keys, fr = [], [], [], []
    for i, key in enumerate(raw["key"].to_pylist()):
        j = where.get(key)
        vid = None if j is None else video_id(source, groups[j], frames[j])
        if vid is None:
            continue
        keep.append(i)
        vids.append(vid)
        keys.append(key)
        fr.append(int(frames[j]))
    feats = _matrix(raw, "features")[keep] if features else None
    return _video_table(vids, keys, [item["shard"]] * len(keys), fr, _matrix(raw, "probs")[keep], feats)


def _video_table(
    vids: list[str],
    keys: list[str],
    shards: list[str],
    frames: list[int],
    probs: np.ndarray,
    features: np.ndarray | None,
) -> pa.Table:
    cols = {
        "vid": pa.array(vids, pa.string()),
        "key": pa.array(keys, pa.string()),
        "shard": pa.array(shards, pa.string()),
        "frame": pa.array(frames, pa.int64()),
        "probs": _list_column(probs),
    }
    if features is not None:
        cols["features"] = _list_column(features)
    return pa.table(cols)


@lru_cache(maxsize=4)
def _sequence_model(path: str) -> tuple[Any, int, tuple[float, ...] | None]:
    """(temporal members, window, ensemble weights) of a checkpoint, loaded once per worker process."""
    import torch

    from engine.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    loaded = load_checkpoint(path)
    temporal = getattr(loaded.model, "temporal", None)
    if temporal is None:
        raise ValueError(f"{path} has no sequence members (model.temporal)")
    return temporal, loaded.model_cfg.temporal_window, loaded.model_cfg.temporal_weights


def _video_group(table: pa.Table, *, method: str | None, window: int, sequence: str | None) -> pa.Table:
    """One video: the sequence ensemble (when ``sequence``), then smoothing (when ``method``)."""
    from engine.smoothing import smooth_probs

    probs = _matrix(table, "probs")
    frames = table["frame"].to_numpy()
    out = {"key": table["key"], "shard": table["shard"]}
    if sequence is not None:
        from engine.models.sequence import sequence_predict

        temporal, seq_window, weights = _sequence_model(sequence)
        vid = str(table["vid"][0])
        probs, members = sequence_predict(
            temporal,
            probs,
            _matrix(table, "features"),
            [vid] * len(frames),
            frames.tolist(),
            window=seq_window,
            weights=weights,
        )
        out["members"] = _list_column(members.reshape(len(frames), -1))
    if method is not None:
        probs = smooth_probs(probs, frames, method=method, window=window)
    out["probs"] = _list_column(probs)
    return pa.table(out)


def _write_group(table: pa.Table, *, items: dict[str, dict[str, str]], **finish: Any) -> pa.Table:
    shard = str(table["shard"][0])
    video = {"keys": table["key"].to_pylist(), "probs": _matrix(table, "probs")}
    if "members" in table.column_names:
        video["members"] = _matrix(table, "members")
    _finalise(items[shard], video, **finish)
    return pa.table({"shard": [shard], "rows": pa.array([table.num_rows], pa.int64())})


def _copy_shard(item: dict[str, str], **finish: Any) -> dict[str, Any]:
    _finalise(item, None, **finish)
    return {"shard": item["shard"]}


def _finalise(
    item: dict[str, str],
    video: dict[str, Any] | None,
    *,
    out_dir: str,
    bins: int,
    sequence: str | None,
    disagreement: str,
) -> None:
    """Write a shard's final part and stats: its raw rows with the video rows' processed probabilities."""
    shard = item["shard"]
    if not fs.exists(item["raw"]):
        fs.write_json(join(out_dir, "stats", f"{shard}.json"), {"n": 0})
        return
    raw = fs.read_parquet(item["raw"])
    probs = _matrix(raw, "probs")
    keys = raw["key"].to_pylist()
    members = None
    if sequence is not None:  # every row a one-frame sequence first; video rows are overwritten below
        from engine.models.sequence import ensemble, single_frame_probs

        temporal, _, weights = _sequence_model(sequence)
        feats = _matrix(raw, "features")
        probs, members = ensemble(probs, {m: single_frame_probs(h, feats) for m, h in temporal.items()}, weights)
    if video is not None:
        row = {k: i for i, k in enumerate(keys)}
        idx = np.asarray([row[k] for k in video["keys"]], np.int64)
        probs[idx] = video["probs"]
        if members is not None:
            members[idx] = video["members"].reshape(len(idx), *members.shape[1:])
    if members is not None:
        va = None
        if "valence" in raw.column_names:
            va = np.stack([raw["valence"].to_numpy(), raw["arousal"].to_numpy()], axis=1)
        teacher = str(raw["teacher"][0]) if raw.num_rows else ""
        table = score_table(keys, shard, probs, teacher, branch_probs=members, va=va, disagreement=disagreement)
    else:
        c = probs.shape[1]
        table = raw.set_column(
            raw.schema.get_field_index("probs"), "probs", pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), c)
        )
        for name, values in score_columns(probs).items():
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
        table = table.cast(raw.schema)
    fs.write_parquet(join(out_dir, f"part-{shard}.parquet"), table)
    fs.write_json(join(out_dir, "stats", f"{shard}.json"), ScoreStats.from_probs(probs, bins).to_json())


def _list_column(values: np.ndarray) -> pa.Array:
    return pa.array([v.tolist() for v in values], pa.list_(pa.float32()))


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    """(N, K) float32 copy of a list column (fixed-size or variable-size lists of equal length)."""
    col = table[column].combine_chunks()
    n = len(col)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(n, -1).copy() if n else np.zeros((0, 0), np.float32)
