"""Config loading: precedence, strictness, typed overrides, fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, load_config
from engine.errors import ConfigError
from engine.fingerprint import fingerprint


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_then_files_then_overrides(tmp_path):
    a = _write(tmp_path, "a.yaml", "train:\n  epochs: 3\n  lr: 0.1\nstorage:\n  root: /x\n")
    b = _write(tmp_path, "b.yaml", "train:\n  epochs: 5\n")
    cfg = load_config([a, b], ["train.lr=0.2", "threshold.never_label=Other,Fear"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 0.2
    assert cfg.storage.root == "/x"
    assert cfg.train.batch_size == Config().train.batch_size
    assert cfg.threshold.never_label == ("Other", "Fear")


def test_unknown_key_names_it_and_suggests(tmp_path):
    a = _write(tmp_path, "a.yaml", "threshold:\n  polcy: fixed\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'threshold.polcy' in .*a.yaml; did you mean 'threshold.policy'"
    ):
        load_config([a])


def test_unknown_section_and_override():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config([], ["trian.epochs=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"train\.epochs .* must be int, got 'ten'"):
        load_config([], ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="must be bool"):
        load_config([], ["score.tta_flip=3"])


def test_int_promoted_to_float_and_null():
    cfg = load_config([], ["train.lr=1", "select.cap_per_class=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.select.cap_per_class is None


def test_sources_mapping_fills_names_and_validates(tmp_path):
    a = _write(tmp_path, "a.yaml", "sources:\n  fer:\n    format: fer2013\n    path: /d\n")
    cfg = load_config([a], ["sources.fer.limit=10"])
    assert cfg.source("fer").name == "fer"
    assert cfg.source("fer").limit == 10
    with pytest.raises(ConfigError, match="unknown source 'fe'; did you mean 'fer'"):
        cfg.source("fe")
    bad = _write(tmp_path, "b.yaml", "sources:\n  fer:\n    format: fer2013\n")
    with pytest.raises(ConfigError, match="path"):
        load_config([bad])


def test_value_checks():
    with pytest.raises(ConfigError, match=r"ingest\.image_format must be one of png, jpg"):
        load_config([], ["ingest.image_format=gif"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("campaign.labelled_fraction=1.5", r"campaign\.labelled_fraction must be in \(0, 1\] or null, got 1\.5"),
        ("campaign.labelled_fraction=-0.2", r"campaign\.labelled_fraction must be in \(0, 1\] or null, got -0\.2"),
        ("campaign.labelled_fraction=0", r"campaign\.labelled_fraction must be in \(0, 1\] or null, got 0"),
        ("campaign.max_labelled=-5", r"campaign\.max_labelled must be positive or null, got -5"),
        ("campaign.max_eval=0", r"campaign\.max_eval must be positive or null, got 0"),
        ("campaign.rounds=-3", r"campaign\.rounds must be in \[0, 10000\], got -3"),
        ("train.epochs=0", r"train\.epochs must be positive, got 0"),
        ("train.epochs=-1", r"train\.epochs must be positive, got -1"),
        ("train.lr=-1", r"train\.lr must be positive, got -1"),
        ("train.batch_size=0", r"train\.batch_size must be positive, got 0"),
        ("train.weight_decay=-0.1", r"train\.weight_decay must be in \[0\.0, inf\], got -0\.1"),
        ("train.optimizer=adam", r"train\.optimizer must be one of sgd, adamw; got 'adam'"),
        ("threshold.tau=7", r"threshold\.tau must be in \[0\.0, 1\.0\], got 7"),
        ("threshold.tau_min=-0.1", r"threshold\.tau_min must be in \[0\.0, 1\.0\], got -0\.1"),
        ("threshold.top_k=0", r"threshold\.top_k must be positive, got 0"),
        ("score.batch_size=-1", r"score\.batch_size must be positive, got -1"),
        ("score.num_actors=-1", r"score\.num_actors must be in \[0, 100000\], got -1"),
        ("ingest.max_pixels=-1", r"ingest\.max_pixels must be positive, got -1"),
        ("ingest.min_side_px=0", r"ingest\.min_side_px must be positive, got 0"),
        ("ingest.resize=0", r"ingest\.resize must be positive, got 0"),
        ("eval.batch_size=0", r"eval\.batch_size must be positive, got 0"),
        ("eval.splits=[train]", r"eval\.splits must be one of val, test; got 'train'"),
        ("select.cap_per_class=-1", r"select\.cap_per_class must be in \[0, \d+\], got -1"),
        ("select.weight=-1", r"select\.weight must be in \[0\.0, inf\], got -1"),
        ("model.std=[0]", r"model\.std must be positive, got \[0(\.0)?\]"),
        ("model.mean=[0.5,0.5]", r"model\.mean and model\.std need 1 or model\.in_chans=1 values"),
    ],
)
def test_out_of_range_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [override])


def test_dead_score_sources_key_is_gone():
    with pytest.raises(ConfigError, match="score"):
        load_config([], ["score.sources=[a]"])


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_fingerprint_is_stable_under_key_order_and_sensitive_to_values():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint(load_config().threshold) == fingerprint(load_config().threshold)
    assert fingerprint(load_config().threshold) != fingerprint(load_config([], ["threshold.tau=0.9"]).threshold)
    assert fingerprint((1, 2)) == fingerprint([1, 2])


def test_in_process_training_is_one_worker():
    from engine.config import TrainConfig

    assert TrainConfig(in_process=True).num_workers == 1
    with pytest.raises(ConfigError, match=r"trains one worker .* set train.num_workers=1 \(got 2\)"):
        TrainConfig(in_process=True, num_workers=2)


def test_inputs_a_job_cannot_use_are_one_line_config_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^config file {missing} does not exist \(or is not a file\)"):
        load_config([missing])
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match=rf"^{tagged}: not a plain YAML config \(line 1, column 4\): could not "):
        load_config([tagged])
    a_file = tmp_path / "root"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=rf"^storage.root {a_file} is a file, not a folder"):
        load_config([], [f"storage.root={a_file}"])
    with pytest.raises(ConfigError, match=r"^override 'train.lr=\[1': the value is not valid YAML; quote it$"):
        load_config([], ["train.lr=[1"])


def test_ingest_job_without_sources_is_one_line_before_ray_starts(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"storage:\n  root: {tmp_path / 'runs'}\nsources: {{}}\n")
    out = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--config", str(empty)], cwd=repo, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout, out.stderr) == (
        2,
        "",
        "error: no sources configured: add a `sources:` section (see conf/fer2013.yaml) or --set one\n",
    )
    assert not (tmp_path / "runs").exists()


def test_a_campaign_checks_its_sources_and_teacher_before_starting_anything(tmp_path):
    from engine.campaign import check_inputs
    from engine.errors import EngineError

    demo = Path(__file__).resolve().parents[2] / "conf/demo.yaml"
    with pytest.raises(ConfigError, match=r"^unknown source 'ferx'"):
        check_inputs(load_config([demo], ["campaign.eval=[ferx]"]))
    missing = tmp_path / "teacher.pt"
    with pytest.raises(EngineError, match=rf"^checkpoint {missing} does not exist"):
        check_inputs(load_config([demo], [f"campaign.teacher_checkpoint={missing}"]))
    with pytest.raises(ConfigError, match=r"^campaign.labelled is empty: name at least one labelled source"):
        check_inputs(load_config([demo], ["campaign.labelled=[]"]))


def test_keys_added_later_enter_stage_fingerprints_only_when_set() -> None:
    """A stage committed before ``threshold.target_precision`` / ``select.weighting`` / ``model.weights`` existed
    keeps its fingerprint while they sit at their defaults; set, they are fingerprinted."""
    import dataclasses

    from engine.config import ModelConfig, SelectConfig, ThresholdConfig, fingerprint_fields

    before = {
        k: v for k, v in dataclasses.asdict(ThresholdConfig()).items() if k not in ("target_precision", "min_support")
    }
    assert fingerprint_fields("threshold", ThresholdConfig()) == before
    assert fingerprint_fields("threshold", ThresholdConfig(min_support=5))["min_support"] == 5
    assert "target_precision" not in fingerprint_fields("threshold", ThresholdConfig(min_support=5))
    assert set(dataclasses.asdict(SelectConfig())) - set(fingerprint_fields("select", SelectConfig())) == {
        "weighting",
        "min_weight",
    }
    weighted = fingerprint_fields("select", SelectConfig(weighting="policy", min_weight=0.1))
    assert (weighted["weighting"], weighted["min_weight"]) == ("policy", 0.1)
    assert "weights" not in fingerprint_fields("model", ModelConfig())
