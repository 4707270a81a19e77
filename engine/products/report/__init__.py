"""The round's self-contained ``report.html``: thresholds, selection, histograms, galleries, eval, dedup, label issues.

Everything is inlined (matplotlib plots and face thumbnails as base64 PNG, CSS in a ``<style>``), so the file can be
mailed, opened offline or stored as an MLflow artifact. Data is read from the round's committed files only:
``thresholds.json`` (this and earlier rounds), ``select/quality.json``, ``score/stats.json``, ``eval/metrics.json``
(student, and the teacher's round), the sources' ``quarantine.parquet`` / manifest leakage flags, and
``curation/label_issues.parquet`` when present. Galleries never load the score table on the driver: one Ray Data
task per score part reads (key, pred, conf), the shard's selected keys (a pushed-down parquet filter) and hidden
labels, and returns its per-class top-k per gallery; the driver merges those O(shards x classes x k) rows and fetches
only the winning images, again one task per shard.

Modules: ``page`` (build, write and log the page), ``sections`` (one function per section), ``galleries`` (image
galleries and thumbnails), ``markup`` (HTML helpers and the template); the plots are ``engine.plots``.
"""

from engine.products.report.page import finish_round, rebuild_report, write_report

__all__ = ["finish_round", "rebuild_report", "write_report"]
