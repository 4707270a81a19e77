"""Names of the storage layout: shard ids, shard tar URLs, round files."""

from __future__ import annotations

import pytest

from engine.layout import CampaignLayout, SourceLayout, parse_shard, parse_shard_url, shard_name


def test_layout_parses_the_names_it_makes() -> None:
    assert parse_shard(shard_name("aff-wild2", 12)) == ("aff-wild2", 12)  # a source name may hold dashes
    assert parse_shard_url(SourceLayout("s3://b/root", "fer").shard(3)) == ("s3://b/root", "fer-000003")
    for bad in ("fer", "fer-", "fer-x1", "-000001"):
        with pytest.raises(ValueError, match="not a shard id"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="not a shard tar"):
        parse_shard_url("/root/fer-000001.tar")


def test_round_files_live_in_their_stage_directories() -> None:
    lay = CampaignLayout("/r", "c")
    assert lay.labelled == "/r/campaigns/c/partition/labelled.parquet"
    rnd = lay.round(2)
    assert (rnd.metrics, rnd.confusion_png("val")) == (
        "/r/campaigns/c/rounds/r002/eval/metrics.json",
        "/r/campaigns/c/rounds/r002/eval/confusion_val.png",
    )
    assert rnd.online_pool == "/r/campaigns/c/rounds/r002/train/online_pool.parquet"  # train's, not the partition's
