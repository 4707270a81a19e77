"""``fer-engine status``: the state of every stage read from files and writer locks, without Ray or MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.io import fs
from engine.io.lock import writer_lock
from engine.layout import SUCCESS, CampaignLayout, SourceLayout
from engine.products.status import format_status, stage_state, storage_status

REPO = Path(__file__).resolve().parents[2]


def _storage(root: Path) -> CampaignLayout:
    """A root with one committed source, one source whose ingest was killed, and a campaign whose round 1 stopped
    after its threshold stage."""
    src = SourceLayout(str(root), "fer2013")
    fs.write_json(
        src.success,
        {
            "counts": {
                "kept": 1200,
                "quarantined": 3,
                "shards": 2,
                "by_reason": {"duplicate": 2, "decode_error": 1},
                "by_split": {"train": 1000, "val": 100, "test": 100},
            }
        },
    )
    fs.write_json(SourceLayout(str(root), "expw").work_dir + "/listing/x.json", {})
    lay = CampaignLayout(str(root), "demo")
    fs.write_json(
        lay.config, {"campaign.rounds": 2, "curation.label_issues": True, "campaign.teacher_checkpoint": None}
    )
    fs.write_json(
        lay.state,
        {
            "mlflow_run_id": "parent1",
            "rounds": {
                "0": {
                    "status": "done",
                    "val_macro_f1": 0.41234,
                    "test_macro_f1": 0.4,
                    "promoted": True,
                    "mlflow_run_id": "run0",
                },
                "1": {"status": "running", "mlflow_run_id": "run1"},
            },
            "teacher": {"round": 0},
            "stopped": None,
            "tracking_uri": "sqlite:///mlflow.db",
        },
    )
    fs.write_json(lay.partition_dir + "/" + SUCCESS, {})
    for stage in ("train", "evaluate", "curation"):
        fs.write_json(lay.round(0).stage_dir(stage) + "/" + SUCCESS, {})
    for stage in ("score", "threshold"):
        fs.write_json(lay.round(1).stage_dir(stage) + "/" + SUCCESS, {})
    fs.write_json(lay.round(1).select_dir + "/_RUNNING.json", {"fingerprint": "x"})
    return lay


def test_status_reads_every_stage_state(tmp_path: Path) -> None:
    lay = _storage(tmp_path)
    r1 = lay.round(1)
    with writer_lock(r1.train_dir, "train r001"):  # a live writer
        assert stage_state(r1.train_dir) == "running"
        st = storage_status(str(tmp_path))
    assert stage_state(r1.train_dir) == "missing"  # the lock went with its holder, which wrote nothing
    assert [(s.name, s.state, s.counts.get("kept")) for s in st.sources] == [
        ("expw", "interrupted", None),
        ("fer2013", "committed", 1200),
    ]
    (c,) = st.campaigns
    assert (c.name, c.partition, c.teacher_round, c.mlflow_run_id) == ("demo", "committed", 0, "parent1")
    assert [(r.index, r.status, r.stages) for r in c.rounds] == [
        (0, "done", {"train": "committed", "evaluate": "committed", "curation": "committed"}),
        (
            1,
            "running",
            {
                "score": "committed",
                "threshold": "committed",
                "select": "interrupted",
                "train": "running",
                "evaluate": "missing",
                "curation": "missing",
            },
        ),
        (2, "planned", {s: "missing" for s in ("score", "threshold", "select", "train", "evaluate", "curation")}),
    ]
    text = format_status(st).splitlines()
    assert text[2:5] == [
        "source   state        kept   quarantined  shards  train/val/test  quarantine reasons",
        "expw     interrupted  -      -            -       -               -",
        "fer2013  committed    1,200  3            2       1,000/100/100   decode_error 1, duplicate 2",
    ]
    assert text[7].split() == ["round", "status", "stages", "val", "F1", "test", "F1", "promoted", "MLflow", "run"]
    assert text[7].index("val F1") == text[8].index("0.4123") == text[9].index("-  ")  # aligned columns
    assert text[8].split() == ["r000", "done", "✓train", "✓evaluate", "✓curation", "0.4123", "0.4000", "yes", "run0"]
    assert text[9].split()[:8] == [
        "r001",
        "running",
        "✓score",
        "✓threshold",
        "…select",
        "▶train",
        "·evaluate",
        "·curation",
    ]


def test_status_command_needs_no_ray(tmp_path: Path) -> None:
    _storage(tmp_path)
    code = (
        "import sys; from engine.cli import entry; entry(['status', sys.argv[1]]); "
        "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules and 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "campaign demo: partition committed, teacher r000, MLflow run parent1 (sqlite:///mlflow.db)" in out.stdout
    missing = subprocess.run(
        [sys.executable, "-c", "from engine.cli import entry; entry(['status', 'no/such/root'])"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (missing.returncode, missing.stderr) == (
        2,
        "error: storage root no/such/root does not exist; pass the storage.root a job wrote to\n",
    )


def test_status_lists_the_pretraining_runs_of_the_root(tmp_path: Path) -> None:
    done = tmp_path / "pretrain" / "0123456789abcdef"
    counts = {"faces": 28000, "epochs": 20, "images_per_s": 249.6}
    counts |= {"probe_val_macro_f1": 0.31234, "probe_untrained_val_macro_f1": 0.2}
    fs.write_json(str(done / SUCCESS), {"counts": counts})
    fs.write_json(str(tmp_path / "pretrain" / "fedcba9876543210" / "_RUNNING.json"), {"fingerprint": "x"})
    st = storage_status(str(tmp_path))
    assert [(p.name, p.state, p.counts) for p in st.pretrains] == [
        ("0123456789abcdef", "committed", counts),
        ("fedcba9876543210", "interrupted", {}),
    ]
    text = format_status(st).splitlines()
    assert [line.split() for line in text[4:7]] == [
        ["pretraining", "state", "faces", "epochs", "faces/s", "probe", "val", "F1", "(untrained)"],
        ["0123456789abcdef", "committed", "28,000", "20", "249", "0.312", "(0.200)"],
        ["fedcba9876543210", "interrupted", "-", "-", "-", "-"],
    ]
