"""Test helpers: the dataset builders of bench/fer_layouts.py (every supported layout from real FER2013 PNGs, bad
image files), stages run outside a campaign, and repository scripts loaded as modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.fer_layouts import *  # noqa: F403  (the builders, under the names the tests have always used)
from bench.fer_layouts import FER_DIR, FER_LABELS, FER_TAR, FerImage, face, fer_available, fer_images  # noqa: F401

# ---------------------------------------------------------------- stages outside a campaign


def ingest_stage(root: Path | str, source: Any, ingest: Any = None) -> Any:
    """The ingest stage of one ``SourceConfig`` (with its ``name``) under ``root``, as a campaign builds it."""
    from engine.config import Config, IngestConfig, StorageConfig
    from engine.stages.base import StageContext
    from engine.stages.ingest import IngestStage

    cfg = Config(storage=StorageConfig(root=str(root)), sources={source.name: source}, ingest=ingest or IngestConfig())
    return IngestStage(StageContext(cfg, source=source.name))


def load_script(rel_path: str, name: str) -> Any:
    """A repository script (``bench/…``, not a package module) imported as module ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / rel_path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod
