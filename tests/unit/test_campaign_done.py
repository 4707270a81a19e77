"""A finished campaign is recognised from campaign.json alone (no Ray, no MLflow) and reported in one line."""

from __future__ import annotations

from pathlib import Path

from engine.campaign import completed
from engine.config import load_config
from engine.fingerprint import fingerprint
from engine.io import fs
from engine.layout import CampaignLayout
from engine.summary import mlflow_ui_hint, print_nothing_to_do


def _cfg(root: Path, *extra: str):
    return load_config(["conf/demo.yaml"], [f"storage.root={root}", *extra])


def _write_done(root: Path, cfg, rounds=(0, 1), stopped=None) -> dict:
    lay = CampaignLayout(str(root), cfg.campaign.name)
    state = {
        "name": cfg.campaign.name,
        "config_fingerprint": fingerprint(cfg),
        "rounds": {str(r): {"status": "done", "val_macro_f1": 0.25 + r / 10, "test_macro_f1": 0.2} for r in rounds},
        "stopped": stopped,
        "mlflow_run_id": "abc",
        "tracking_uri": f"sqlite:///{root}/mlflow.db",
    }
    fs.write_json(lay.state, state)
    for r in rounds:
        fs.write_json(lay.round(r).state, {"round": r})
    return state


def test_completed_only_with_same_config_and_every_round_committed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert completed(cfg) is None  # nothing yet
    state = _write_done(tmp_path, cfg)
    assert completed(cfg) == state
    assert completed(_cfg(tmp_path, "train.epochs=3")) is None  # another config: the run must check its stages
    (tmp_path / "campaigns/demo/rounds/r001/round.json").unlink()
    assert completed(cfg) is None


def test_completed_when_stopped_early_and_not_when_rounds_remain(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "campaign.rounds=3")
    _write_done(tmp_path, cfg, rounds=(0, 1))
    assert completed(cfg) is None
    state = _write_done(tmp_path, cfg, rounds=(0, 1), stopped="round 1: no gain")
    assert completed(cfg) == state


def test_nothing_to_do_is_one_line_plus_the_mlflow_command(tmp_path: Path, capsys) -> None:
    cfg = _cfg(tmp_path)
    state = _write_done(tmp_path, cfg)
    print_nothing_to_do(cfg, state)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"nothing to do: campaign demo in {tmp_path} is complete with this config (macro-F1 r000 val 0.2500 / test "
        f"0.2000, r001 val 0.3500 / test 0.2000); delete {tmp_path} to run it again",
        f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db, then open http://127.0.0.1:5000/",
    ]
    with_exp = {**state, "mlflow_experiment_id": "3"}
    assert mlflow_ui_hint(cfg, with_exp) == (
        f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db, then open "
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    )
    assert mlflow_ui_hint(_cfg(tmp_path, "tracking.uri=http://mlf:5000"), {}) == (
        "MLflow: open http://mlf:5000 (experiment fer-pseudolabel)"
    )


def test_warnings_name_quarantine_unlabelled_classes_and_unpromoted_students(tmp_path: Path) -> None:
    from engine.summary import campaign_warnings

    cfg = _cfg(tmp_path)
    state = _write_done(tmp_path, cfg, rounds=(0, 1, 2))
    state["prepared"] = {
        "ingest": {"fer2013": {"counts": {"quarantined": 3, "by_reason": {"truncated": 1, "empty": 2}}}}
    }
    state["rounds"]["1"]["promoted"] = True
    state["rounds"]["2"]["promoted"] = False
    lay = CampaignLayout(str(tmp_path), "demo")
    per_class = {"Anger": {"selected": 4}, "Disgust": {"selected": 0}, "Fear": {"selected": 0}}
    fs.write_json(lay.round(1).state, {"round": 1, "quality": {"per_class": per_class}})
    assert campaign_warnings(cfg, state) == [
        f"source fer2013: 3 inputs quarantined (empty 2, truncated 1); the rows and reasons are in "
        f"{tmp_path}/sources/fer2013/quarantine.parquet",
        "round r001: no pseudo-label for Disgust, Fear (none passed its threshold)",
        "round r002: the student was not promoted (val macro-F1 0.4500 did not beat the teacher's); the next round "
        "keeps the teacher",
    ]
