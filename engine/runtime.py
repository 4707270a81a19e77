"""Ray start-up and resource mapping: the only place that calls ``ray.init``."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to the cluster in RAY_ADDRESS (set by ``ray job submit``) or start a local Ray.

    Safe to call twice. ``num_cpus`` applies only to a local Ray.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.verbose_stats_logs = False
    log.info("ray: %s", ray.cluster_resources())


def cluster_cpus() -> int:
    """CPUs in the connected cluster (1 when unknown)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    """GPUs in the connected cluster."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
