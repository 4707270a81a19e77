"""The generated references (engine.reference): committed pages equal a fresh generation, every config key and every
command is listed; the list and config commands show what the registries and the loaded config hold."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

from engine import config as config_mod
from engine.cli import COMMANDS, registry_listing
from engine.reference import cli_reference, config_reference, errors_reference, pages, raised_errors

REPO = Path(__file__).resolve().parents[2]
FIX = "run `python -m engine.reference` and commit docs/reference/"


def test_committed_references_equal_a_fresh_generation() -> None:
    for rel, text in pages().items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: {FIX}"


def test_the_formats_page_has_a_section_per_registered_format() -> None:
    from engine.reference import formats_reference
    from engine.sources import adapter_names

    page = formats_reference()
    assert [ln[4:-1] for ln in page.splitlines() if ln.startswith("## `")] == list(adapter_names())
    assert "    format: image_folder\n" in page and "`ambiguous_range`" in page


def test_the_troubleshooting_page_lists_the_engine_errors() -> None:
    errors = raised_errors(REPO / "engine")
    page = errors_reference()
    assert f"{len(errors)} messages." in page
    assert (
        "| threshold.tau_min=… is above threshold.tau=…; … keeps every threshold between them: set tau_min <= tau | "
        "`engine/checks.py` |" in page
    )
    assert ("StorageError", "engine/io/fs.py", "storage root … is full (…); free space on it, …") in errors


def _dataclass_keys(prefix: str, cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out |= _dataclass_keys(f"{prefix}{f.name}.<name>.", typing.get_args(tp)[1])
        elif dataclasses.is_dataclass(tp):
            out |= _dataclass_keys(f"{prefix}{f.name}.", tp)  # type: ignore[arg-type]
        else:
            out.add(f"{prefix}{f.name}")
    return out


def test_the_config_reference_lists_every_key_with_a_meaning() -> None:
    keys = _dataclass_keys("", config_mod.Config) - {"sources.<name>.name"}  # filled from the mapping key
    rows = [ln for ln in config_reference().splitlines() if ln.startswith("| `")]
    listed = {ln.split("`")[1] for ln in rows}
    assert listed == keys
    assert [ln.split("`")[1] for ln in rows if ln.rstrip().endswith("|  |")] == []  # no key without its docstring


def test_the_config_reference_shows_checks_and_registries() -> None:
    page = config_reference()
    assert "| `threshold.tau` | `float` | `0.95` | in [0.0, 1.0] | Base threshold:" in page
    assert '| `train.schedule` | `str` | `"cosine"` | one of: cosine, onecycle, warmup_cosine |' in page
    assert "| `ingest.samples_per_shard` | `int` | `1000` | > 0 |" in page
    assert '| `threshold.policy` | `str` | `"dtm_r"` | a registered name: see policies below |' in page
    assert (
        "- **policies**: `dtm_r`, `fixed`, `flexmatch`, `freematch`, `precision`, `quantile`, `softmatch`, `topk`"
        in page
    )


def test_the_cli_reference_has_every_command() -> None:
    page = cli_reference()
    assert [ln[4:-1] for ln in page.splitlines() if ln.startswith("## `")] == list(COMMANDS)
    assert "usage: fer-engine round [-h] [--config CONFIG] [--set KEY=VALUE] [--verbose] [--all]" in page


def test_list_shows_each_registry() -> None:
    from engine.labels import LABEL_SPACES
    from engine.sources import adapter_names
    from engine.thresholds.registry import available_policies

    assert [n for n, _ in registry_listing("policies")] == list(available_policies())
    assert [n for n, _ in registry_listing("formats")] == list(adapter_names())
    assert [n for n, _ in registry_listing("label-spaces")] == sorted(LABEL_SPACES)
    models = dict(registry_listing("models"))
    assert list(models)[:5] == ["tiny_cnn", "small_cnn", "vgg_fer", "resnet_fer", "mini_xception"]
    assert models["tiny_cnn"].startswith("Three conv-BN-ReLU layers")
    assert dict(registry_listing("policies"))["fixed"].startswith("FixMatch (Sohn et al. 2020")


def test_config_show_prints_each_value_with_its_origin(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "config",
            "--show",
            "--config",
            "conf/demo.yaml",
            "--set",
            "threshold.tau=0.9",
            "--set",
            "student.model={width: 24}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = {ln.split(":", 1)[0]: " ".join(ln.split(":", 1)[1].split()) for ln in done.stdout.splitlines()}
    assert lines["threshold.tau"] == "0.9 # --set"
    assert lines["threshold.policy"] == '"dtm_r" # conf/demo.yaml'
    assert lines["threshold.momentum"] == "0.999 # default"
    assert lines["student.model.width"] == "24 # --set"
    cfg = config_mod.load_config([REPO / "conf/demo.yaml"], ["threshold.tau=0.9", "student.model={width: 24}"])
    assert list(lines) == list(config_mod.flatten(cfg))  # every key once, in the config's order
