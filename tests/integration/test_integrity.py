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


def _files(root) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_a_copied_root_runs_its_next_round_inside_itself(tiny_campaign, tmp_path):
    """``cp -a`` of a finished campaign, then one more round on the copy: nothing under the original changes, the
    copy's records name its own files, and its MLflow store (runs, logged models, registry, datasets) points into
    the copy."""
    import dataclasses
    import json

    from mlflow import MlflowClient

    from engine.campaign import run_campaign
    from engine.tracking import default_uri

    original = tiny_campaign.root
    root = tmp_path / "copy"
    shutil.copytree(original, root, symlinks=True)
    before = _files(original)
    cfg = dataclasses.replace(
        tiny_campaign.cfg,
        storage=dataclasses.replace(tiny_campaign.cfg.storage, root=str(root)),
        campaign=dataclasses.replace(tiny_campaign.cfg.campaign, rounds=2),
        curation=dataclasses.replace(tiny_campaign.cfg.curation, label_issues=False),
    )
    state = run_campaign(cfg)

    assert state["rounds"]["2"]["status"] == "done"
    assert _files(original) == before  # not one file of the original written, added or removed
    records = sorted(p for p in (root / "campaigns").rglob("*.json"))
    assert [str(p.relative_to(root)) for p in records if str(original) in p.read_text()] == []
    round2 = json.loads((root / "campaigns/demo/rounds/r002/round.json").read_text())
    teacher = f"campaigns/demo/rounds/r{tiny_campaign.state['teacher']['round']:03d}/train/student.pt"
    assert (round2["teacher"]["paths"], round2["student"]["path"]) == (
        [teacher],
        "campaigns/demo/rounds/r002/train/student.pt",
    )

    client = MlflowClient(tracking_uri=default_uri(str(root)), registry_uri=default_uri(str(root)))
    exp = client.get_experiment(state["mlflow_experiment_id"])
    assert exp.artifact_location == str(root / "mlartifacts")
    runs = [state["mlflow_run_id"], *(state["rounds"][r]["mlflow_run_id"] for r in ("0", "1", "2"))]
    assert [client.get_run(r).info.artifact_uri for r in runs] == [f"{root}/mlartifacts/{r}/artifacts" for r in runs]
    versions = client.search_model_versions("name = 'demo'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    where = [client.get_model_version_download_uri("demo", v.version) for v in versions]
    assert all(w.startswith(f"{root}/mlartifacts/models/") for w in where), where
    sources = [json.loads(i.dataset.source)["uri"] for r in runs for i in client.get_run(r).inputs.dataset_inputs]
    assert sources and all(s.startswith(f"{root}/campaigns/demo/") for s in sources)
