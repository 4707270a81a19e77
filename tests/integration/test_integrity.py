"""Checksums end to end on a copy of the shared tiny campaign: one flipped bit in each kind of committed file (shard
tar, manifest part, score part, selection, checkpoint) is found by ``verify_root`` and stops the next run at the
stage that wrote it, with one line naming the file and the command that rebuilds it."""

from __future__ import annotations

import shutil

import pytest

from engine.io.checksums import verify_root
from engine.layout import CampaignLayout, SourceLayout

FLIPPED = "sha256 changed (same size: bytes flipped in place)"


def _flip(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_each_committed_file_kind_is_found_and_stops_the_next_run(tiny_campaign, tmp_path):
    import dataclasses

    from engine.campaign import run_campaign
    from engine.errors import CorruptFile

    root = tmp_path / "copy"
    shutil.copytree(tiny_campaign.root, root, symlinks=True)
    assert verify_root(str(root)).bad == {}
    src, camp = SourceLayout(str(root), "fer2013"), CampaignLayout(str(root), "demo")
    r1 = camp.round(1)
    victims = {
        src.dir: [
            root / "sources/fer2013/manifest/part-000002.parquet",
            root / "sources/fer2013/shards/fer2013-000001.tar",
        ],
        r1.score_dir: [sorted((root / "campaigns/demo/rounds/r001/score").glob("part-*.parquet"))[0]],
        r1.select_dir: [root / "campaigns/demo/rounds/r001/select/selection.parquet"],
        camp.round(0).train_dir: [root / "campaigns/demo/rounds/r000/train/student.pt"],
    }  # fmt: skip
    for paths in victims.values():
        for p in paths:
            _flip(p)
    check = verify_root(str(root))
    assert check.unchecked == 0 and check.files > 0
    found = {d: (stage, sorted((str(p.path), p.problem) for p in probs)) for d, (stage, probs) in check.bad.items()}
    stage_of = {src.dir: "ingest", r1.score_dir: "score", r1.select_dir: "select", camp.round(0).train_dir: "train"}
    assert found == {d: (stage_of[d], sorted((str(p), FLIPPED) for p in ps)) for d, ps in victims.items()}

    cfg = dataclasses.replace(
        tiny_campaign.cfg, storage=dataclasses.replace(tiny_campaign.cfg.storage, root=str(root))
    )
    with pytest.raises(CorruptFile) as err:
        run_campaign(cfg)
    part, shard = victims[src.dir]  # in path order
    assert str(err.value) == (
        f"ingest fer2013: 2 committed file(s) differ from what the stage wrote ({part}: {FLIPPED}; {shard}: "
        f"{FLIPPED}); rebuild it: re-run with --set storage.on_existing=overwrite"
    )
