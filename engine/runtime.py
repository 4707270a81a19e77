"""Ray start-up and resource mapping: the only place that calls ``ray.init``."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from engine.errors import ConfigError, Terminated

log = logging.getLogger(__name__)


LOST_NODE_ATTEMPTS = 3
"""Tries of an idempotent stage phase whose Ray work failed because a node, worker or actor was lost."""

_LOST_NAMES = ("ActorDiedError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError")


def lost_ray_node(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is Ray losing a node, worker, actor or object: a
    failure of the cluster, not of the data. Ray Data sometimes re-raises such an error as a ``RayTaskError`` or an
    ``UnserializableException`` that carries the original only as text, so the text is checked too."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in _LOST_NAMES or any(n + ":" in str(e) for n in _LOST_NAMES):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_lost_nodes(label: str, fn: Any, attempts: int = LOST_NODE_ATTEMPTS) -> Any:
    """``fn()``, run again (up to ``attempts`` tries in all) when it fails because a Ray node was lost
    (``lost_ray_node``); ``fn`` must be idempotent: a phase that skips what it has committed or writes nothing."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not lost_ray_node(exc):
                raise
            first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            log.warning(
                "%s: a Ray node, worker or actor was lost (%s); try %d of %d", label, first, attempt + 1, attempts
            )
    raise AssertionError("unreachable")


@contextlib.contextmanager
def task_shuffle() -> Iterator[None]:
    """Ray Data ``groupby`` through the pull-based sort shuffle (plain tasks: sample, map, reduce) for the ``with``
    body; build and run the dataset inside it.

    Ray Data 2.60 groups with its hash shuffle by default, which starts a pool of aggregator actors for each
    ``groupby``: about 10 s of fixed cost on 2 cores whatever the data size (an ingest of 180 faces spent 25 of its
    32 s in its two groupbys, 9 with this shuffle). The sort shuffle is Ray Data's long-standing shuffle for data of
    any size (it spills through the object store); the groups, and so every output, are the same.
    """
    import ray
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = before


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to the cluster in RAY_ADDRESS (set by ``ray job submit``) or start a local Ray.

    Safe to call twice. ``num_cpus`` applies only to a local Ray. Unless the job runs with ``--verbose``
    (engine.logs), Ray's workers do not print to this console and Ray Data draws progress bars only on a terminal:
    their logs stay in Ray's session directory, printed once here.
    """
    import ray

    from engine.logs import quiet_ray, verbose

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs.setdefault("log_to_driver", verbose())
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(**kwargs)
    else:
        context = _start_local(num_cpus, **kwargs)
    handle_sigterm()  # ray.init installed its own handler: it would end the job with exit 1 and C++ stack lines
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose()  # the engine draws one bar per stage itself (engine.progress)
    ctx.verbose_stats_logs = False
    quiet_ray()
    log.info("ray: %s", cluster_resources())
    session = getattr(context, "address_info", {}).get("session_dir")
    if session and not verbose():
        log.info("Ray's own logs (workers, Ray Data, Ray Train): %s/logs (--verbose prints them here)", session)


def ray_started() -> Any:
    """The ``ray`` module, with Ray started or joined (:func:`init_ray`) if it was not: what driver code that
    builds Ray work calls instead of ``import ray``, so a job starts Ray only when some work needs it (a job whose
    stages are committed, or whose work runs in-process, never does). A no-op inside Ray's own workers."""
    import ray

    init_ray()
    return ray


def map_items(fn: Any, items: list[dict[str, Any]], kwargs: dict[str, Any], *, here: bool) -> Iterator[Any]:
    """``fn(item, **kwargs)`` of each item: in this process, in order, when ``here``; else one Ray task per item
    (Ray started if it was not), in the order they finish. The same function either way, so the same outputs."""
    if here:
        return (fn(item, **kwargs) for item in items)
    ds = ray_started().data.from_items(items, override_num_blocks=max(1, len(items)))
    return iter(ds.map(fn, fn_kwargs=kwargs).iter_rows())


def ray_running() -> bool:
    """Whether this process has started or joined Ray (never imports it: unit tests stay free of Ray)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def local_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_work() -> bool:
    """Whether small work may run in this process instead of on Ray: not on a cluster (``RAY_ADDRESS`` set, as
    ``ray job submit`` does), where the driver's node is not meant for work."""
    return not os.environ.get("RAY_ADDRESS")


LOCAL_START_ATTEMPTS = 3
"""Tries to start a local Ray: its raylet must register within a fixed 30 s, which a busy machine can miss."""


def _start_local(num_cpus: int | None, **kwargs: Any) -> Any:
    import psutil  # vendored by Ray (ray/thirdparty_files): importable once init_ray imported ray
    import ray

    me = psutil.Process()
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            context = ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
            atexit.register(_end_local_ray, [p for p in me.children() if p.pid not in before])
            return context
        except Exception as exc:  # Ray raises a bare Exception for this timeout
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            log.warning(
                "local Ray did not start within Ray's 30 s (attempt %d of %d; machine busy?); retrying",
                attempt,
                LOCAL_START_ATTEMPTS,
            )
            ray.shutdown()
            # The half-started node (GCS, raylet) are this process's own children: end exactly those.
            stale = [p for p in me.children(recursive=True) if p.pid not in before]
            for p in stale:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(stale, timeout=10)


def handle_sigterm() -> None:
    """Make SIGTERM raise :class:`engine.errors.Terminated` (a KeyboardInterrupt) in the main thread, so a job ends
    as on Ctrl-C: stages unwind, committed outputs stay, one ``interrupted:`` line, exit 143. Called when a job
    starts and again after ``ray.init``, whose own handler would replace it. A second SIGTERM during that unwinding
    is ignored (the cleanup is bounded; SIGKILL still ends the process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"signal {signum}")


def _end_local_ray(nodes: list[Any], grace: float = 3.0) -> None:
    """At the exit of a driver that started a local Ray: shut it down, then end every process of that node that is
    still alive. ``nodes`` are the processes ``ray.init`` started (GCS, raylet, agents); the raylet's workers are
    their descendants, taken before the shutdown because a worker can outlive its raylet, reparented to init (a Ray
    Train controller of 1.2 GB was seen alive minutes after a job ended). Nothing outside that tree is touched."""
    import psutil
    import ray

    tree = []
    for p in nodes:
        with contextlib.suppress(psutil.Error):
            tree += [p, *p.children(recursive=True)]
    with contextlib.suppress(Exception):
        ray.shutdown()
    _, left = psutil.wait_procs(tree, timeout=grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        _, left = psutil.wait_procs(left, timeout=grace)
        if not left:
            return


def cluster_cpus() -> int:
    """CPUs in the connected cluster (1 when unknown)."""

    return max(1, int(cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    """GPUs in the connected cluster."""

    return int(cluster_resources().get("GPU", 0))


def shortfall(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """``{resource: (needed, available)}`` for every resource ``need`` asks more of than ``have`` holds."""
    return {k: (v, float(have.get(k, 0.0))) for k, v in need.items() if v > float(have.get(k, 0.0)) + 1e-9}


def require(label: str, need: Mapping[str, float]) -> None:
    """Refuse, before it starts, a stage whose reservation (``Stage.resources()``) the connected cluster can never
    hold at once: Ray would leave it pending forever. On a cluster joined through ``RAY_ADDRESS`` the autoscaler
    may still add nodes, so there the shortfall is a warning. A no-op when Ray is not started."""
    if not ray_running() or not (short := shortfall(need, cluster_resources())):
        return
    what = ", ".join(f"{k} {v:g} (the cluster has {h:g})" for k, (v, h) in sorted(short.items()))
    if os.environ.get("RAY_ADDRESS"):
        log.warning("%s reserves %s: it waits until the autoscaler adds nodes", label, what)
        return
    raise ConfigError(
        f"{label} reserves {what} at once and this local Ray cannot hold it: lower the stage's workers / actors, "
        "drop its GPU setting, or run on a cluster (RAY_ADDRESS) that has them"
    )


def cluster_resources() -> dict[str, float]:
    """``ray.cluster_resources()`` of the connected cluster (typed)."""
    import ray

    res: dict[str, float] = ray.cluster_resources()
    return res
