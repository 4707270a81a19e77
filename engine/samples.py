"""Ray Datasets of training samples read back from the shards: labelled set, selection, unlabelled pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow.compute as pc

from engine.io import fs
from engine.io.tars import read_images
from engine.layout import shard_tar


def _rows_of_shard(item: dict[str, Any], *, root: str) -> Iterator[dict[str, Any]]:
    t = fs.read_parquet(item["table"])
    t = t.filter(pc.equal(t["shard"], item["shard"]))
    rows = t.to_pylist()
    images = read_images(shard_tar(root, item["shard"]), {r["key"] for r in rows})
    for r in sorted(rows, key=lambda r: r["key"]):
        for _ in range(int(r.get("repeat") or 1)):
            row = {
                "key": r["key"],
                "image": images[r["key"]],
                "label": int(r["label"]),
                "weight": float(r.get("weight") or 1.0),
            }
            if "idx" in r:
                row["idx"] = int(r["idx"])
            yield row


def samples_dataset(root: str, table_path: str) -> Any:
    """A Ray Dataset (key, image bytes, label, weight) of the rows of a (key, shard, label[, weight, repeat]) table.

    One task per shard reads the shard's tar once; rows with ``repeat`` > 1 appear that many times.
    """
    import ray

    shards = sorted(set(fs.read_parquet(table_path, columns=["shard"])["shard"].to_pylist()))
    items = [{"shard": s, "table": table_path} for s in shards]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).flat_map(
        _rows_of_shard, fn_kwargs={"root": root}
    )
