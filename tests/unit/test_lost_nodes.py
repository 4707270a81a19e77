"""A phase whose Ray work failed because a node was lost is re-run; any other failure is raised at once."""

from __future__ import annotations

import logging

import pytest
import ray.exceptions as rex

from engine.runtime import lost_ray_node, retry_lost_nodes


def test_lost_node_errors_are_told_from_data_errors() -> None:
    assert lost_ray_node(rex.ActorDiedError())
    assert lost_ray_node(rex.NodeDiedError("node 1 died"))
    # How Ray Data re-raised a dead FooterReader actor in a simulated-cluster run: the original as text only.
    text = "RayTaskError: ...\nray.exceptions.ActorDiedError: The actor died"
    assert lost_ray_node(rex.UnserializableException(text))
    wrapped = RuntimeError("stage failed")
    wrapped.__cause__ = rex.ActorDiedError()
    assert lost_ray_node(wrapped)
    assert not lost_ray_node(ValueError("bad pixel data"))
    assert not lost_ray_node(RuntimeError("ActorDiedError without a colon is just a word"))


def test_retry_reruns_a_phase_after_a_lost_node_and_raises_anything_else(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise rex.ActorDiedError()
        return "done"

    with caplog.at_level(logging.WARNING, logger="engine.runtime"):
        assert retry_lost_nodes("ingest x", flaky) == "done"
    assert len(calls) == 2
    assert "ingest x: a Ray node, worker or actor was lost" in caplog.text and "try 2 of 3" in caplog.text

    def always_lost() -> None:
        calls.append(1)
        raise rex.NodeDiedError("gone")

    calls.clear()
    with pytest.raises(rex.NodeDiedError):
        retry_lost_nodes("ingest x", always_lost, attempts=3)
    assert len(calls) == 3

    def bad_data() -> None:
        calls.append(1)
        raise ValueError("bad")

    calls.clear()
    with pytest.raises(ValueError):
        retry_lost_nodes("ingest x", bad_data)
    assert len(calls) == 1
