"""A stage the local Ray can never hold is refused before it writes anything (Ray would leave it pending forever)."""

from __future__ import annotations

import logging

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.runtime import cluster_resources
from engine.stages.base import RunOutput, Stage, StageContext


class Reserving(Stage):
    name = "reserving"

    def __init__(self, out_dir: str, need: dict[str, float]) -> None:
        super().__init__(StageContext(load_config([], [])))
        self._out, self.need, self.ran = out_dir, need, False

    @property
    def out_dir(self) -> str:
        return self._out

    def resources(self) -> dict[str, float]:
        return self.need

    def fingerprint_inputs(self) -> dict[str, float]:
        return self.need

    def run(self) -> RunOutput:
        self.ran = True
        return RunOutput()


def test_stage_beyond_the_local_cluster_is_refused_before_it_runs(ray_local, tmp_path):
    assert cluster_resources().get("GPU", 0) == 0 and cluster_resources()["CPU"] == 2
    s = Reserving(str(tmp_path / "gpu"), {"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"^reserving reserves GPU 1 \(the cluster has 0\) at once"):
        s.execute()
    assert not s.ran and not (tmp_path / "gpu").exists()
    with pytest.raises(ConfigError, match=r"reserves CPU 3 \(the cluster has 2\)"):
        Reserving(str(tmp_path / "cpu"), {"CPU": 3.0}).execute()
    ok = Reserving(str(tmp_path / "ok"), {"CPU": 2.0, "GPU": 0.0})
    assert ok.execute().skipped is False and ok.ran


def test_on_a_joined_cluster_the_shortfall_waits_for_the_autoscaler(ray_local, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # read by require only: this process is already connected
    s = Reserving(str(tmp_path / "gpu"), {"GPU": 0.0, "CPU": 0.5})
    with caplog.at_level(logging.WARNING, logger="engine.runtime"):
        s.execute()
    assert s.ran and caplog.records == []
    s = Reserving(str(tmp_path / "gpu2"), {"GPU": 2.0})
    monkeypatch.setattr(Reserving, "run", lambda self: RunOutput(counts={"ran": 1}))
    with caplog.at_level(logging.WARNING, logger="engine.runtime"):
        assert s.execute().counts == {"ran": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "reserving reserves GPU 2 (the cluster has 0): it waits until the autoscaler adds nodes"
    ]
