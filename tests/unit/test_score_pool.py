"""Size and CPU reservation of the scoring actor pool (no Ray: pure functions of the config and the cluster)."""

from __future__ import annotations

import pytest

from engine.config import ScoreConfig
from engine.stages.score import READ_CPUS, actor_cpus, pool_size


@pytest.mark.parametrize(
    ("cfg", "cpus", "gpus", "actors"),
    [
        (ScoreConfig(), 2, 0, 2),  # auto on a 2-core machine: one single-threaded actor per core
        (ScoreConfig(cpus_per_actor=2.0), 8, 0, 4),
        (ScoreConfig(cpus_per_actor=3.0), 2, 0, 1),  # never fewer than one
        (ScoreConfig(gpus_per_actor=1.0), 32, 4, 4),  # one per GPU on a GPU cluster
        (ScoreConfig(gpus_per_actor=0.5), 32, 4, 8),
        (ScoreConfig(gpus_per_actor=1.0), 32, 0, 32),  # asked for GPUs, none there: the CPU rule
        (ScoreConfig(num_actors=3), 64, 8, 3),  # an explicit size wins
    ],
)
def test_pool_size_fills_the_cluster_unless_given(cfg: ScoreConfig, cpus: int, gpus: int, actors: int) -> None:
    assert pool_size(cfg, cpus, gpus) == actors


def test_actors_leave_room_for_a_read_task_on_every_node_of_a_cpu_cluster() -> None:
    cfg = ScoreConfig()
    assert actor_cpus(cfg, 2, 2, 0.0) == 0.75  # one node, 2 cores: 1.5 for the actors, 0.5 for reads (0.25 each)
    assert actor_cpus(cfg, 3, 3, 0.0) == 0.75  # three 1-CPU nodes: 0.75 + one 0.25 read on each
    assert actor_cpus(cfg, 8, 2, 0.0) == pytest.approx(1.75 / 8)  # more actors than CPUs: they share what is left
    assert actor_cpus(cfg, 2, 8, 0.0) == 1.0  # room to spare: as asked
    assert actor_cpus(ScoreConfig(cpus_per_actor=2.0), 2, 4, 0.0) == 1.5
    assert actor_cpus(ScoreConfig(gpus_per_actor=1.0), 4, 4, 1.0) == 1.0  # GPU actors: reads are not starved
    assert READ_CPUS == 0.25
