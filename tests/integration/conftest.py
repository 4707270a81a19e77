"""Integration fixtures: one local Ray for the whole session (2 CPUs, no dashboard) and one tiny real campaign
(ingest + round 0 + round 1 on FER2013) that every test reading a finished campaign shares."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.processes import tiny_sets

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s and starts a preemption watcher; a faster poll and no watcher
# (read by fit() from the driver's environment, inherited by the drivers the tests start) cut about a quarter of
# each tiny training's fixed cost.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

REPO = Path(__file__).resolve().parents[2]

TINY_CAMPAIGN_SETS = [
    "train.val_from=0",  # every epoch validated, so the kept (best) epoch is checked against round.json
    "threshold.tau=0.0",  # with the per-class cap: a non-empty selection and rejected rows whatever the teacher
    "select.cap_per_class=10",
    "curation.label_issues=true",
    "curation.folds=2",
    "curation.epochs=1",
    "student.model.name=small_cnn",  # round 1's student is another net than round 0's tiny_cnn: from scratch
    "train.soft_labels=true",  # round 1 learns the teacher's probabilities, sharpened
    "train.soft_temperature=0.5",
]
"""What the shared campaign sets beyond :func:`tests.integration.processes.tiny_sets` (2 epochs)."""


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class TinyCampaign:
    """The shared finished campaign ``demo`` (``cfg.storage.root`` is ``root``, given as ``.`` from inside it).
    Tests must not change ``root``; a test that needs to, copies it (:meth:`copy_sources` for a fresh campaign on
    the same ingested source)."""

    cfg: Any
    root: Path
    state: dict[str, Any]

    def copy_sources(self, dest: Path) -> Path:
        """``dest/sources`` = this campaign's committed ingest: a tiny campaign rooted at ``dest`` with the same
        source settings (:func:`tiny_sets`) skips its ingest."""
        shutil.copytree(self.root / "sources", dest / "sources")
        return dest

    def given_teacher_sets(self, name: str, extra: list[str]) -> list[str]:
        """``--set`` overrides of conf/demo.yaml for a new tiny campaign ``name`` (storage root ``.``: run it from a
        :meth:`copy_sources` folder) whose round-0 teacher is this campaign's round-0 student (no training), 1 epoch,
        then ``extra``."""
        teacher = str(self.root / "campaigns/demo/rounds/r000/train/student.pt")
        sets = [*tiny_sets(".", self.cfg.sources["fer2013"].path, epochs=1), *TINY_CAMPAIGN_SETS]
        return [*sets, f"campaign.name={name}", f"campaign.teacher_checkpoint={teacher}", *extra]


@pytest.fixture(scope="session")
def tiny_campaign(ray_local, fer2013_dir, tmp_path_factory) -> TinyCampaign:
    from engine.campaign import run_campaign
    from engine.config import load_config

    root = tmp_path_factory.mktemp("tiny_campaign")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a relative storage root, as in conf/demo.yaml: load_config resolves it against this folder
        cfg = load_config([REPO / "conf/demo.yaml"], [*tiny_sets(".", fer2013_dir, epochs=2), *TINY_CAMPAIGN_SETS])
        state = run_campaign(cfg)
    assert cfg.storage.root == str(root)
    assert [state["rounds"][r]["status"] for r in ("0", "1")] == ["done", "done"]
    return TinyCampaign(cfg, root, state)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
