"""Config loading: precedence, strictness, typed overrides, fingerprints."""

from __future__ import annotations

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
