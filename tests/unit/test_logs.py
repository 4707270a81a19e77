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


def _ending(exc: BaseException, capsys) -> tuple[int, list[str]]:
    import pytest

    from engine import cli

    def run(args):
        raise exc

    p = cli.parser("x", config=False)
    p.set_defaults(_run=run)
    with pytest.raises(SystemExit) as end:
        cli._main(p, [])
    return int(end.value.code), capsys.readouterr().err.strip().splitlines()


def test_a_command_ends_in_one_line_for_expected_errors_and_asks_for_a_report_on_bugs(capsys):
    from engine.errors import ConfigError, Terminated

    assert _ending(ConfigError("train.epochs must be ≥ 1, got 0"), capsys) == (
        2,
        ["error: train.epochs must be ≥ 1, got 0"],
    )
    assert _ending(KeyboardInterrupt(), capsys) == (130, [f"interrupted: {cli.INTERRUPTED}"])
    assert _ending(Terminated("signal 15"), capsys) == (143, [f"interrupted: {cli.INTERRUPTED}"])
    code, lines = _ending(ZeroDivisionError("division by zero"), capsys)
    assert (code, lines[0], lines[-2:]) == (
        1,
        "Traceback (most recent call last):",
        ["ZeroDivisionError: division by zero", f"bug: {cli.BUG_REPORT}"],
    )


def test_sigterm_raises_terminated_in_the_main_thread_once_then_is_ignored_during_the_unwinding():
    import os
    import signal

    import pytest

    from engine.errors import Terminated
    from engine.runtime import handle_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        handle_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # a bytecode boundary after the signal: its Python handler runs here
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the test process goes on
    finally:
        signal.signal(signal.SIGTERM, before)
