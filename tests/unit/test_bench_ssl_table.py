"""bench/ssl_fer2013.py's bookkeeping without Ray: which (seed, row) campaigns run in which order, and how the gap
recovered is averaged when rows have different seeds."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import load_script

REPO = Path(__file__).resolve().parents[2]


def _bench():
    return load_script("bench/ssl_fer2013.py", "ssl_fer2013_table")


def test_plan_runs_all_seed_rows_first_then_the_rest_on_the_first_seed():
    b = _bench()
    rows = [r for r in b.ROWS if r.key in ("sup100", "fixed95", "fixed80", "dtmr05", "flexmatch")]
    got = [(s, r.key) for s, r in b.plan(rows, [0, 1, 2], ["fixed95", "dtmr05"])]
    assert got == [
        (0, "fixed95"),
        (0, "dtmr05"),
        (1, "fixed95"),
        (1, "dtmr05"),
        (2, "fixed95"),
        (2, "dtmr05"),
        (0, "sup100"),
        (0, "fixed80"),
        (0, "flexmatch"),
    ]
    # Without --all-seeds: every row for every seed, seed by seed (the order before the option existed).
    got = [(s, r.key) for s, r in b.plan(rows[:2], [3, 4], None)]
    assert got == [(3, "sup100"), (3, "fixed95"), (4, "sup100"), (4, "fixed95")]


def test_gap_averages_both_ends_over_the_rows_own_seeds():
    b = _bench()
    by_row = {
        "sup10": [{"seed": 0, "test_f1": 0.40}, {"seed": 1, "test_f1": 0.50}],
        "sup100": [{"seed": 0, "test_f1": 0.60}, {"seed": 1, "test_f1": 0.70}],
    }
    assert b._gap(0.45, by_row, [0]) == "+25.0%"  # (0.45 - 0.40) / (0.60 - 0.40)
    assert b._gap(0.45, by_row, [0, 1]) == "+0.0%"  # ends 0.45 and 0.65
    assert b._gap(0.55, by_row, [0, 1]) == "+50.0%"
    assert b._gap(0.55, by_row, [0, 2]) == ""  # no supervised rows for seed 2: no figure rather than a mixed one


def test_stop_reason_rounds_long_figures_only():
    b = _bench()
    got = b._stop("round 1: student val macro-F1 0.457695351101523 did not beat the teacher's 0.4639")
    assert got == "round 1: val 0.4577 ≤ teacher's 0.4639"
    assert b._stop("no pseudo-labels selected in round 2") == "no pseudo-labels selected in round 2"


def test_stopped_column_names_each_seeds_reason_in_full():
    b = _bench()
    reason = "round {}: student val macro-F1 0.{} did not beat the teacher's 0.5"
    res = [{"seed": 0, "stopped": reason.format(3, "49999999")}, {"seed": 1, "stopped": None},
           {"seed": 2, "stopped": reason.format(2, "4")}]  # fmt: skip
    assert b._stops(res) == "s0 round 3: val 0.5000 ≤ teacher's 0.5; s2 round 2: val 0.4 ≤ teacher's 0.5"
    assert b._stops(res[2:]) == "round 2: val 0.4 ≤ teacher's 0.5"


def test_table_lists_rows_in_row_order_whatever_order_they_ran_in():
    import argparse

    b = _bench()

    def res(row, seed, f1):
        rd = {"round": 0, "val_f1": f1, "test_f1": f1, "test_acc": f1, "quality": None, "thresholds": None}
        return {"row": row, "seed": seed, "campaign": f"{row}_s{seed}", "stopped": None, "rounds": [rd],
                "final_round": 0, "test_f1": f1, "test_acc": f1, "seconds": 60.0}  # fmt: skip

    results = [res("sup10", 0, 0.4), res("dtmr05", 0, 0.5), res("sup100", 0, 0.6), res("fixed95", 0, 0.45)]
    args = argparse.Namespace(argv=["--seeds", "0"], preset="cpu", config=str(REPO / "conf/x.yaml"), seeds=[0])
    text = b.render(args, results, 60.0, {r.key: r.label for r in b.ROWS})
    head = text.split("| row | seeds |")[1].split("\n\n")[0].splitlines()[2:]  # the headline table's rows
    assert [line.split(" | ")[0][2:] for line in head] == [
        "1 supervised 10 %",
        "2 supervised 100 %",
        "3 fixed 0.95",
        "4 DTM-R τmin 0.5",
    ]
    assert "| 4 DTM-R τmin 0.5 | 0 | 0.5000 | 0.5000 | +50.0% |" in text


def test_unknown_or_stray_rows_are_refused_before_anything_runs(capsys):
    import pytest

    b = _bench()
    for argv, says in (
        (["--rows", "dtmr5"], "unknown rows ['dtmr5']"),
        (["--rows", "dtmr05", "--all-seeds", "fixed9"], "unknown rows ['fixed9']"),
        (["--rows", "dtmr05", "--all-seeds", "fixed95"], "--all-seeds rows ['fixed95'] are not in --rows"),
    ):
        with pytest.raises(SystemExit):
            b.main(argv)
        assert says in capsys.readouterr().err


def test_kept_from_filled_in_for_rounds_selected_before_the_stage_recorded_it(tmp_path):
    """Classes (B, A, C) in label order; quality.json lists them by name. A: 3 passed, 2 kept (capped), lowest kept
    confidence 0.75; B: 1 passed, 1 kept at 0.5; C: nothing. A round that has the fields is left as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = _bench()
    sel = tmp_path / "selection.parquet"
    pq.write_table(pa.table({"label": [1, 1, 0], "conf": pa.array([0.9, 0.75, 0.5], pa.float32())}), sel)
    quality = {
        "per_class": {"A": {"selected": 2}, "B": {"selected": 1}, "C": {"selected": 0}},
        "steps": {"passed_threshold": {"A": 3, "B": 1, "C": 0}, "after_ratio_cap": {"A": 2, "B": 1, "C": 0}},
    }
    got = b._with_kept_from(quality, str(sel), ("B", "A", "C"))["per_class"]
    assert got == {
        "A": {"selected": 2, "kept_from": 0.75, "capped": True},
        "B": {"selected": 1, "kept_from": 0.5, "capped": False},
        "C": {"selected": 0, "kept_from": None, "capped": False},
    }
    assert [b._tau(n, 0.5, got[n]) for n in ("A", "B", "C")] == ["A 0.50→0.750", "B 0.50", "C 0.50"]
    recorded = {"per_class": {"A": {"kept_from": 0.1, "capped": False}}, "steps": {}}
    assert b._with_kept_from(recorded, str(tmp_path / "absent.parquet"), ("A",)) == recorded


def test_row_seconds_counts_every_round_of_a_resumed_row():
    b = _bench()
    # finished by an earlier invocation: its recorded minutes, else its stages' sum
    assert b.row_seconds(2.0, 3985.0, 4100.0) == 4100.0
    assert b.row_seconds(2.0, 3985.0, None) == 3985.0
    # run from scratch now: the wall time (stages plus Ray's start)
    assert b.row_seconds(1300.0, 1280.0, None) == 1300.0
    # resumed for its last round: the wall time covers that round only, the stages' sum all three
    assert b.row_seconds(1220.0, 3985.0, 1500.0) == 3985.0
