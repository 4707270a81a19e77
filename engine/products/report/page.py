"""``report.html`` of a round: built from its committed files, written atomically, logged to MLflow."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.errors import ConfigError
from engine.io import fs
from engine.layout import RoundLayout
from engine.products.report.galleries import ImageRequests, fetch_thumbnails, gallery_section
from engine.products.report.markup import PAGE, STYLE, fill_thumbnails
from engine.products.report.review import review_section
from engine.products.report.sections import (
    dedup_section,
    eval_section,
    header,
    histogram_section,
    label_issue_section,
    selection_section,
    thresholds_section,
)
from engine.stored import RoundRef

if TYPE_CHECKING:
    from engine.tracking import Tracker

log = logging.getLogger(__name__)


log = logging.getLogger(__name__)


def finish_round(
    cfg: Config,
    lay: RoundLayout,
    doc: dict[str, Any],
    *,
    tracker: Tracker | None = None,
    run_id: str | None = None,
) -> None:
    """``report.html`` of a round whose stages have committed, logged to its MLflow run.

    Called by :func:`engine.round.run_round` just before ``round.json``; ``doc`` is that document.
    """
    ref = RoundRef(cfg.storage.root, cfg.campaign.name, lay.index, cfg)
    if cfg.report.enabled:
        path = write_report(ref, doc=doc)
        if tracker is not None and run_id:
            tracker.log_artifact(run_id, path)


def rebuild_report(round_dir: str, overrides: Sequence[str] = (), *, label_issues: bool = False) -> str:
    """Rebuild ``report.html`` of a finished round (and its label issues first, when asked); log it to MLflow.

    The report goes into the round's MLflow run when ``round.json`` names one and the tracking store is reachable.
    """
    from engine.stages.curation import run_label_issues
    from engine.stored import open_round

    ref = open_round(round_dir, overrides)
    doc = fs.read_json_or_none(ref.layout.state)
    if doc is None:
        raise ConfigError(f"{ref.layout.state} is missing: round r{ref.index:03d} has not finished; run it first")
    if label_issues:
        run_label_issues(ref)
    path = write_report(ref, doc=doc)
    if doc.get("mlflow_run_id"):
        from engine.tracking import tracker_for

        tracker = tracker_for(ref.root, ref.cfg.tracking.uri, ref.cfg.tracking.experiment)
        tracker.log_artifact(doc["mlflow_run_id"], path)
    return path


def write_report(ref: RoundRef, *, doc: dict[str, Any] | None = None) -> str:
    """Build the round's ``report.html`` (atomically) and return its path.

    Args:
        ref: the round (see :func:`engine.stored.open_round`).
        doc: the round's ``round.json`` document; read from storage when None.
    """
    lay = ref.layout
    doc = doc if doc is not None else fs.read_json(lay.state)
    names = list(ref.space.classes)
    rc = ref.cfg.report
    parts = [header(ref, doc)]
    images = ImageRequests()
    if ref.index > 0 and fs.exists(lay.thresholds):
        parts.append(thresholds_section(ref, names))
        parts.append(selection_section(lay, names))
        parts.append(histogram_section(lay, names, rc))
        parts.append(gallery_section(ref, names, rc, images))
    else:
        parts.append(
            "<section><h2>Pseudo-labels</h2><p>Round 0 trains the first teacher on the labelled set alone: "
            "no scoring, thresholds or selection.</p></section>"
        )
    parts.append(review_section(ref, names, rc, images))
    parts.append(eval_section(ref, doc, names))
    parts.append(label_issue_section(ref, names, rc, images))
    parts.append(dedup_section(ref, rc, images))
    thumbs = fetch_thumbnails(ref.root, images.wanted)
    body = fill_thumbnails("\n".join(parts), thumbs)
    page = PAGE.format(title=html.escape(f"{ref.campaign} r{ref.index:03d}"), style=STYLE, body=body)
    fs.write_bytes(lay.report, page.encode())
    log.info("report r%03d: %s (%d thumbnails)", ref.index, lay.report, len(thumbs))
    return lay.report
