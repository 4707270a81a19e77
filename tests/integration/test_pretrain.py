"""Self-supervised pretraining before round 0 (``campaign.pretrain``) on a tiny real campaign: a run that crashes
after an epoch and is executed again resumes there and ends with exactly the weights of a run that never stopped,
and round 0's student starts from them (every backbone tensor)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.io import fs
from engine.layout import SUCCESS, CampaignLayout, join

EPOCHS = 3


def _config(root: Path, tiny_campaign, *extra: str):
    from engine.config import load_config
    from tests.integration.conftest import REPO
    from tests.integration.processes import tiny_sets

    sets = [*tiny_sets(str(root), tiny_campaign.cfg.sources["fer2013"].path, epochs=1)]
    sets += ["campaign.name=pre", "campaign.rounds=0", "tracking.log_models=false", "train.in_process=true"]
    sets += ["campaign.pretrain.method=simsiam", f"campaign.pretrain.epochs={EPOCHS}"]
    sets += ["campaign.pretrain.batch_size=32", "campaign.pretrain.proj_dim=64", "campaign.pretrain.pred_dim=16"]
    sets += ["campaign.pretrain.probe_rows=100"]
    return load_config([REPO / "conf/demo.yaml"], [*sets, *extra])


def _tensors(path: str) -> dict[str, torch.Tensor]:
    from engine.models.checkpoint import load_checkpoint

    return dict(load_checkpoint(path).model.state_dict())


def test_a_crashed_pretraining_resumes_to_the_same_weights_and_round_0_starts_from_them(
    tiny_campaign, tmp_path, monkeypatch
):
    from engine.campaign import prepare, run_campaign
    from engine.models.factory import create_model
    from engine.stages.partition import _manifest_parts
    from engine.stages.pretrain import PretrainStage
    from engine.stages.train import TrainStage
    from engine.train.loop import LoopSpec, warm_start
    from engine.train.state import read_train_state

    crashed = tiny_campaign.copy_sources(tmp_path / "crashed")
    cfg = _config(crashed, tiny_campaign, "campaign.pretrain.max_failures=0")
    with monkeypatch.context() as m:
        m.setattr(PretrainStage, "fault_after_epoch", 0)
        with pytest.raises(EngineError, match=r"(?s)pretraining failed in run .*resume from its last finished epoch"):
            prepare(cfg)
    ctx = prepare(cfg)  # the same call again: resumes after epoch 0
    resumed = ctx.upstream["pretrain"]
    assert not resumed.skipped
    assert resumed.counts["epochs"] == EPOCHS and resumed.counts["epochs_run"] == EPOCHS - 1
    assert resumed.counts["resumed_from_epoch"] == 1
    faces = fs.read_parquet(join(str(crashed), "pretrain", resumed.fingerprint[:16], "faces.parquet"))
    rows = [r for m in _manifest_parts(str(crashed), "fer2013", ["key", "split", "leak_with"]) for r in m.to_pylist()]
    train_keys = {r["key"] for r in rows if r["split"] == "train" and r["leak_with"] is None}  # no val / test face
    assert set(faces["key"].to_pylist()) == train_keys and resumed.counts["faces"] == len(train_keys) == 149

    whole = tiny_campaign.copy_sources(tmp_path / "whole")
    once = prepare(_config(whole, tiny_campaign, "campaign.pretrain.in_process=true")).upstream["pretrain"]
    assert once.fingerprint == resumed.fingerprint and once.counts["epochs_run"] == EPOCHS
    ckpt = {r: join(str(r), resumed.extra["checkpoint"]) for r in (crashed, whole)}
    ta, tb = _tensors(ckpt[crashed]), _tensors(ckpt[whole])
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name  # bit for bit, the classifier's fresh weights included
    assert [r["ssl_loss"] for r in resumed.extra["history"]] == [r["ssl_loss"] for r in once.extra["history"]]

    # the committed net holds the last epoch's backbone (Ray Train's checkpoint of the run), head left fresh
    run_dir = Path(crashed / "pretrain" / resumed.fingerprint[:16] / "ray")
    last = sorted(p for p in run_dir.glob("*/checkpoint_*") if p.is_dir())[-1]
    state = read_train_state(str(last))
    backbone = {k[len("backbone.") :]: v for k, v in state.model.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(ta[k], v) for k, v in backbone.items())
    assert state.epoch == EPOCHS - 1
    meta = fs.read_json(join(str(crashed), "pretrain", resumed.fingerprint[:16], SUCCESS))
    assert meta["counts"]["probe_train_faces"] == meta["counts"]["probe_val_faces"] == 100
    assert 0 <= meta["counts"]["probe_val_macro_f1"] <= 1 and "probe_untrained_val_macro_f1" in meta["counts"]

    # BYOL: the same stage with an EMA target network, checkpointed beside the online one
    byol = prepare(_config(whole, tiny_campaign, "campaign.pretrain.method=byol", "campaign.pretrain.in_process=true"))
    b = byol.upstream["pretrain"]
    assert b.fingerprint != resumed.fingerprint and b.counts["epochs_run"] == EPOCHS
    local = sorted(Path(whole / "pretrain" / b.fingerprint[:16] / "ray").glob("*/local/epoch_*"))[-1]
    byol_state = read_train_state(str(local))
    assert byol_state.ema is not None
    online = {k for k in byol_state.model if not k.startswith("predictor.")}
    assert set(byol_state.ema["module"]) == online  # the target: backbone and projector, no predictor
    moved = [k for k in online if not torch.equal(byol_state.ema["module"][k], byol_state.model[k])]
    assert moved  # an average of the online weights, not a copy
    tb = _tensors(join(str(whole), b.extra["checkpoint"]))
    assert any(not torch.equal(tb[k], ta[k]) for k in ta)

    # round 0 starts from the pretrained net: the train stage's initial checkpoint, loaded by the worker's warm start
    monkeypatch.chdir(crashed)
    state0 = run_campaign(cfg)
    assert state0["rounds"]["0"]["status"] == "done"
    assert state0["prepared"]["pretrain"]["fingerprint"] == resumed.fingerprint
    r0 = CampaignLayout(str(crashed), "pre").round(0)
    marker = fs.read_json(join(r0.train_dir, SUCCESS))
    assert marker["counts"]["pretrained"] == 1 and marker["counts"]["warm_started"] == 1
    assert marker["inputs"]["upstream"]["pretrain"] == resumed.fingerprint
    stage = TrainStage(dataclasses.replace(ctx, round=0))
    assert stage.init_checkpoint == ckpt[crashed] and stage.fingerprint() == marker["fingerprint"]
    spec = LoopSpec(cfg.train, cfg.model, stage.space, 1, "test", init_checkpoint=stage.init_checkpoint)
    torch.manual_seed(123)
    net = create_model(cfg.model, len(stage.space), label_space=stage.space)
    warm_start(net, spec)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, ta[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(_tensors(r0.student).values(), ta.values(), strict=True))
    from engine.summary import tracking_uri
    from engine.tracking import run_metric_steps

    uri = tracking_uri(cfg, state0)
    assert run_metric_steps(uri, state0["mlflow_run_id"], "pretrain/ssl_loss") == set(range(EPOCHS))
