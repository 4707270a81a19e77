"""Ray Datasets of training samples read back from the shards: labelled set, selection, unlabelled pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from engine.io import fs
from engine.io.tars import read_images
from engine.layout import score_part, shard_tar


def sharpen(probs: npt.ArrayLike, temperature: float) -> npt.NDArray[np.float32]:
    """Rows ``p^(1/T) / Σ_c p_c^(1/T)`` (T = 1: ``p`` renormalised; T < 1 sharper), computed in log space."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    out: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def _soft_targets(score_part: str, keys: set[str], temperature: float) -> dict[str, bytes]:
    """``key -> sharpened probabilities`` (float32 bytes) of the given keys, from one score part."""
    t = fs.read_parquet(score_part, columns=["key", "probs"])
    t = t.filter(pc.is_in(t["key"], value_set=pa.array(sorted(keys), pa.string())))
    missing = keys - set(t["key"].to_pylist())
    if missing:
        raise RuntimeError(
            f"{score_part} has no scores for {len(missing)} selected keys (e.g. {sorted(missing)[0]}); the round's "
            "score and select stages disagree: rebuild them with --set storage.on_existing=overwrite"
        )
    flat = t["probs"].combine_chunks().flatten().to_numpy(zero_copy_only=False)  # one flat array, no Python lists
    probs = sharpen(flat.astype(np.float64).reshape(t.num_rows, -1), temperature)
    return {k: p.astype("<f4").tobytes() for k, p in zip(t["key"].to_pylist(), probs, strict=True)}


def _rows_of_shard(
    item: dict[str, Any], *, root: str, score_dir: str | None = None, temperature: float = 1.0
) -> Iterator[dict[str, Any]]:
    t = fs.read_parquet(item["table"])
    t = t.filter(pc.equal(t["shard"], item["shard"]))
    rows = t.to_pylist()
    keys = {r["key"] for r in rows}
    images = read_images(shard_tar(root, item["shard"]), keys)
    targets = _soft_targets(score_part(score_dir, item["shard"]), keys, temperature) if score_dir else None
    for r in sorted(rows, key=lambda r: r["key"]):
        for _ in range(int(r.get("repeat") or 1)):
            row = {
                "key": r["key"],
                "image": images[r["key"]],
                "label": int(r["label"]),
                "weight": 1.0 if r.get("weight") is None else float(r["weight"]),
            }
            if "idx" in r:
                row["idx"] = int(r["idx"])
            if targets is not None:
                row["target"] = targets[r["key"]]
            yield row


def samples_dataset(root: str, table_path: str, *, score_dir: str | None = None, temperature: float = 1.0) -> Any:
    """A Ray Dataset (key, image bytes, label, weight) of the rows of a (key, shard, label[, weight, repeat]) table.

    One task per shard reads the shard's tar once; rows with ``repeat`` > 1 appear that many times. With
    ``score_dir`` (a round's score stage directory) each row also gets ``target``: its teacher probabilities from
    ``part-<shard>.parquet``, sharpened with ``temperature`` (:func:`sharpen`), as float32 bytes (soft labels).
    """
    from engine.runtime import ray_started

    ray = ray_started()

    shards = sorted(set(fs.read_parquet(table_path, columns=["shard"])["shard"].to_pylist()))
    items = [{"shard": s, "table": table_path} for s in shards]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).flat_map(
        _rows_of_shard, fn_kwargs={"root": root, "score_dir": score_dir, "temperature": temperature}
    )
