"""engine.progress: plain lines (not a terminal) with counts, rate and ETA, at most one per interval."""

from __future__ import annotations

import logging

from engine import progress


def test_plain_lines_count_units_and_give_an_eta(monkeypatch, caplog) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        out = list(progress.track([10, 20, 30, 40], desc="score r001", total=100, count=lambda b: b, every_s=2))
    assert out == [10, 20, 30, 40]
    # t0 = 0; items at t = 1, 2, 3, 4: a line at 2 and at 4 (every 2 s); the end was just shown
    assert [r.getMessage() for r in caplog.records] == [
        "score r001: 30/100 rows (30%), 15.0 rows/s, ETA 5 s",
        "score r001: 100/100 rows (100%), 25.0 rows/s, ETA 0 s",
    ]
    caplog.clear()
    clock = iter(float(t) for t in range(100))
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        list(progress.track([10, 20, 30], desc="score r001", total=60, count=lambda b: b, every_s=2))
    # items at t = 1, 2, 3: a line at 2; the end at t = 4
    assert [r.getMessage() for r in caplog.records] == [
        "score r001: 30/60 rows (50%), 15.0 rows/s, ETA 2 s",
        "score r001: 60/60 rows (100%), 15.0 rows/s, ETA 0 s",
    ]


def test_a_short_stage_prints_nothing_and_an_unknown_total_no_eta(monkeypatch, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        assert list(progress.track(range(3), desc="evaluate r000", total=3, unit="shards")) == [0, 1, 2]
    assert caplog.records == []
    assert progress._line("ingest x", 1500, None, "parts", 10.0) == "ingest x: 1,500 parts, 150.0 parts/s"
    assert progress._line("s", 50, 100, "rows", 1.0) == "s: 50/100 rows (50%), 50.0 rows/s, ETA 1 s"
    assert progress._duration(185.2) == "3 min 05 s"


def test_a_terminal_gets_a_tqdm_bar(monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True)
    assert list(progress.track(range(5), desc="export r001", total=5, unit="shards")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.endswith("\rexport r001: 100%|██████████| 5/5 [00:00<00:00, " + err.split("00:00<00:00, ")[-1])
    assert err.split("00:00<00:00, ")[-1].endswith(" shards/s]\n")
