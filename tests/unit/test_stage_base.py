"""The stage contract: one constructor (a StageContext), declared inputs, skip, mismatch, overwrite, partial runs,
atomic writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError, FingerprintMismatch
from engine.io import fs
from engine.stages.base import RunOutput, Stage, StageContext, StageResult


class Counter(Stage):
    name = "counter"

    def __init__(self, out_dir, value, fail=False, on_existing="error"):
        super().__init__(StageContext(load_config([], [f"storage.on_existing={on_existing}"])))
        self._out, self.value, self.fail, self.calls = out_dir, value, fail, 0

    @property
    def out_dir(self):
        return self._out

    def fingerprint_inputs(self):
        return {"value": self.value}

    def run(self):
        self.calls += 1
        fs.write_json(f"{self.out_dir}/out.json", {"v": self.value})
        if self.fail:
            raise RuntimeError("boom")
        return RunOutput(counts={"rows": self.value})


def test_run_then_skip(tmp_path):
    s = Counter(str(tmp_path / "s"), 3)
    r1 = s.execute()
    assert (r1.counts, r1.skipped, s.calls) == ({"rows": 3}, False, 1)
    mtime = (tmp_path / "s" / "_SUCCESS.json").stat().st_mtime_ns
    s2 = Counter(str(tmp_path / "s"), 3)
    r2 = s2.execute()
    assert (r2.counts, r2.skipped, s2.calls) == ({"rows": 3}, True, 0)
    assert (tmp_path / "s" / "_SUCCESS.json").stat().st_mtime_ns == mtime
    assert not (tmp_path / "s" / "_RUNNING.json").exists()


def test_mismatch_is_an_error_that_names_the_change(tmp_path):
    Counter(str(tmp_path / "s"), 3).execute()
    with pytest.raises(FingerprintMismatch, match=r"changed: value\).*on_existing=overwrite"):
        Counter(str(tmp_path / "s"), 4).execute()
    r = Counter(str(tmp_path / "s"), 4, on_existing="overwrite").execute()
    assert r.counts == {"rows": 4}
    assert fs.read_json(str(tmp_path / "s" / "out.json")) == {"v": 4}


def test_failed_run_leaves_no_success_and_resumes(tmp_path):
    with pytest.raises(RuntimeError):
        Counter(str(tmp_path / "s"), 3, fail=True).execute()
    assert not (tmp_path / "s" / "_SUCCESS.json").exists()
    assert (tmp_path / "s" / "_RUNNING.json").exists()
    assert Counter(str(tmp_path / "s"), 3).execute().skipped is False


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "d" / "f.bin"
    with pytest.raises(ValueError), fs.atomic_write(str(target)) as f:
        f.write(b"half")
        raise ValueError("crash")
    assert not target.exists()
    assert list((tmp_path / "d").iterdir()) == []
    fs.write_bytes(str(target), b"whole")
    assert target.read_bytes() == b"whole"


class NeedsUpstream(Counter):
    def inputs(self):
        return ("score",)


def test_a_stage_without_its_committed_upstream_refuses_to_run(tmp_path):
    stage = NeedsUpstream(str(tmp_path / "s"), 1)
    with pytest.raises(ConfigError, match=r"counter: upstream stage\(s\) \['score'\] not committed"):
        stage.execute()
    assert not (tmp_path / "s").exists()
    stage.ctx = stage.ctx.with_result("score", StageResult("score", "f" * 64))
    assert stage.ctx.fingerprint_of("score") == "f" * 64
    assert stage.execute().counts == {"rows": 1}


def test_context_labels_and_layout():
    cfg = load_config([], ["storage.root=/r", "campaign.name=c"])
    ctx = StageContext(cfg, round=3)
    assert ctx.round_layout.dir == "/r/campaigns/c/rounds/r003"
    assert Counter("/x", 1).label == "counter"
    with pytest.raises(Exception, match="without a round"):
        StageContext(cfg).round_layout  # noqa: B018


def test_shortfall_names_each_resource_asked_beyond_the_cluster():
    from engine.runtime import shortfall

    have = {"CPU": 2.0, "memory": 1e9}
    assert shortfall({"CPU": 2.0, "GPU": 0.0}, have) == {}
    assert shortfall({"CPU": 2.5, "GPU": 1.0}, have) == {"CPU": (2.5, 2.0), "GPU": (1.0, 0.0)}


def test_without_ray_started_execute_does_not_check_resources(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # as in a unit-test process (the full run starts Ray)

    class Greedy(Counter):
        def resources(self):
            return {"GPU": 8.0}

    assert Greedy(str(tmp_path / "s"), 1).execute().counts == {"rows": 1}


def test_training_in_process_keeps_the_train_stage_fingerprint():
    from engine.stages.train import TrainStage

    def fp(*sets):
        cfg = load_config([Path(__file__).resolve().parents[2] / "conf/demo.yaml"], list(sets))
        ctx = StageContext(cfg, round=0).with_result("partition", StageResult("partition", "p" * 64, {}, {}, 0.0))
        return TrainStage(ctx).fingerprint()

    assert fp("train.in_process=true") == fp() != fp("train.epochs=3")
