"""Logging set-up for jobs: one format, INFO by default, noisy libraries quietened."""

from __future__ import annotations

import logging
import sys

RAY_LOGGERS = ("ray.data", "ray.train", "ray.tune", "ray.air")
"""Ray libraries whose driver-side INFO lines (Ray Data's per-operator progress blocks on a non-TTY, execution plans,
Ray Train's reports) drown the engine's own; quiet unless ``--verbose``."""

_verbose = False


def verbose() -> bool:
    """Whether the job asked for Ray's own output on the console (``--verbose``)."""
    return _verbose


def quiet_ray() -> None:
    """Ray libraries' loggers at WARNING (INFO with ``--verbose``); again after Ray Data's import, which configures
    its own."""
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if _verbose else logging.WARNING)
    # "Progress bars disabled": the engine turned them off on purpose (engine.progress draws its own)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.WARNING if _verbose else logging.ERROR)


def setup_logging(level: str = "INFO", *, verbose: bool = False) -> None:
    """Configure the root logger once (idempotent); without ``verbose`` Ray's libraries log warnings only here (their
    full logs stay in Ray's session directory, which :func:`engine.runtime.init_ray` prints)."""
    global _verbose
    _verbose = verbose
    root = logging.getLogger()
    quiet_ray()
    if getattr(root, "_engine_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock", "PIL", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._engine_configured = True  # type: ignore[attr-defined]
