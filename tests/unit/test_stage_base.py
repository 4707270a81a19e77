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
    RAY = False  # pure Python: executing it never starts Ray

    def __init__(self, out_dir, value, fail=False, on_existing="error", verify=True):
        sets = [f"storage.on_existing={on_existing}", f"storage.verify={str(verify).lower()}"]
        super().__init__(StageContext(load_config([], sets)))
        self._out, self.value, self.fail, self.calls = out_dir, value, fail, 0

    @property
    def out_dir(self):
        return self._out

    def fingerprint_inputs(self):
        return {"value": self.value}

    def run(self):
        self.calls += 1
        fs.write_json(f"{self.out_dir}/out.json", {"v": self.value})
        fs.write_bytes(f"{self.out_dir}/parts/p0.bin", bytes(range(200)) * self.value)
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


def test_committed_files_are_checksummed_and_checked_before_reuse(tmp_path):
    import hashlib

    from engine.errors import CorruptFile

    out = tmp_path / "s"
    Counter(str(out), 3).execute()
    part = out / "parts" / "p0.bin"
    files = fs.read_json(str(out / "_SUCCESS.json"))["files"]
    assert files == {
        "out.json": [(out / "out.json").stat().st_size, hashlib.sha256((out / "out.json").read_bytes()).hexdigest()],
        "parts/p0.bin": [600, hashlib.sha256(bytes(range(200)) * 3).hexdigest()],
    }
    flipped = bytearray(part.read_bytes())
    flipped[17] ^= 0x04  # one bit, in place: same size
    part.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFile) as err:
        Counter(str(out), 3).execute()
    assert str(err.value) == (
        f"counter: 1 committed file(s) differ from what the stage wrote ({part}: sha256 changed (same size: bytes "
        "flipped in place)); rebuild it: re-run with --set storage.on_existing=overwrite"
    )
    assert Counter(str(out), 3, verify=False).execute().skipped  # storage.verify off: used as it is
    part.write_bytes(bytes(flipped[:100]))  # truncated
    (out / "out.json").unlink()
    with pytest.raises(CorruptFile, match=r"2 committed file\(s\) differ .*out.json: missing; .*p0.bin: size 100"):
        Counter(str(out), 3).execute()
    rebuilt = Counter(str(out), 3, on_existing="overwrite")
    assert rebuilt.execute().skipped is False and rebuilt.calls == 1
    assert part.read_bytes() == bytes(range(200)) * 3
    assert Counter(str(out), 3).execute().skipped  # whole again


def test_verify_command_lists_what_differs_and_what_rebuilds_it(tmp_path):
    import subprocess

    root = tmp_path / "root"
    Counter(str(root / "a"), 1).execute()
    Counter(str(root / "b" / "c"), 2).execute()
    fs.write_json(str(root / "old" / "_SUCCESS.json"), {"stage": "legacy", "fingerprint": "x"})  # no checksums
    cmd = [sys.executable, "-c", "from engine.cli import entry; entry()", "verify", str(root)]
    repo = Path(__file__).resolve().parents[2]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert (ok.returncode, ok.stdout) == (
        0,
        f"{root}: 4 files of 3 committed stages match their sha256 (1 committed before checksums existed: "
        "not checked)\n",
    )
    part = root / "b" / "c" / "parts" / "p0.bin"
    part.write_bytes(b"\xff" + part.read_bytes()[1:])
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert (bad.returncode, bad.stdout.splitlines()) == (
        1,
        [
            f"{root}: 1 of 4 committed files differ from what their stage wrote (1 committed before checksums "
            "existed: not checked):",
            f"  counter ({root}/b/c):",
            f"    {part}: sha256 changed (same size: bytes flipped in place)",
            "rebuild them: re-run the job that wrote each stage with --set storage.on_existing=overwrite (only the "
            "stages listed are redone)",
        ],
    )


def test_a_stage_that_needs_ray_starts_it_only_when_it_runs_never_when_found_committed(tmp_path, monkeypatch):
    from engine.stages import base

    started = []
    monkeypatch.setattr(base, "init_ray", lambda: started.append(True))

    class OnRay(Counter):
        RAY = True

    out = str(tmp_path / "s")
    assert OnRay(out, 3).execute().skipped is False and started == [True]
    assert OnRay(out, 3).execute().skipped is True and started == [True]  # committed: no Ray
    assert Counter(str(tmp_path / "t"), 3).execute().skipped is False and started == [True]  # RAY = False
