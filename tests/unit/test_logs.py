"""The console: Ray's libraries log warnings only unless the job runs with --verbose."""

from __future__ import annotations

import logging

from engine import cli, logs


def test_ray_loggers_quiet_by_default_and_verbose_on_request(monkeypatch):
    monkeypatch.setattr(logs, "_verbose", False)
    p = cli.parser("x")
    assert p.parse_args([]).verbose is False and p.parse_args(["--verbose"]).verbose is True
    logs.setup_logging(verbose=True)
    assert logs.verbose() and {logging.getLogger(n).level for n in logs.RAY_LOGGERS} == {logging.INFO}
    logs.setup_logging(verbose=False)
    assert not logs.verbose() and {logging.getLogger(n).level for n in logs.RAY_LOGGERS} == {logging.WARNING}
