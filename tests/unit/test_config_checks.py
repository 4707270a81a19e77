"""Names checked against the registries and rules between keys, at load (engine.checks): each case of the hostile
probe that used to fail after ingest and round 0's training, or inside Ray Train, is one line before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checks import check_config
from engine.config import load_config
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml"))


def _check(*overrides: str) -> None:
    check_config(load_config([REPO / "conf/demo.yaml"], overrides))


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_passes(path: str) -> None:
    files = [REPO / "conf/demo.yaml", REPO / path] if "recipes" in path else [REPO / path]
    check_config(load_config(files))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["threshold.policy=magic"],
            "threshold.policy='magic' is not known; valid: dtm_r, fixed, flexmatch, freematch, precision, quantile, "
            "softmatch, topk",
        ),
        (
            ["threshold.policy=dtmr"],
            "threshold.policy='dtmr' is not known; did you mean 'dtm_r'? valid: dtm_r, fixed, flexmatch, freematch, "
            "precision, quantile, softmatch, topk",
        ),
        (
            ["threshold.tau=0.6", "threshold.tau_min=0.7"],
            "threshold.tau_min=0.7 is above threshold.tau=0.6; dtm_r keeps every threshold between them: set "
            "tau_min <= tau",
        ),
        (
            ["threshold.policy=precision", "threshold.tau=0.6", "threshold.tau_min=0.7"],
            "threshold.tau_min=0.7 is above threshold.tau=0.6; precision keeps every threshold between them: set "
            "tau_min <= tau",
        ),
        (
            ["threshold.mapping=convx"],
            "unknown mapping 'convx' for dtm_r; valid: convex, linear, concave, linear_offset, low_limit",
        ),
        (
            ["train.online_policy=precision"],
            "train.online_policy='precision' has no online form; use one of dtm_r, fixed, flexmatch, freematch, "
            "softmatch",
        ),
        (
            ["threshold.never_label=[Sadnes]"],
            "threshold.never_label: unknown label name 'Sadnes'; did you mean 'sadness'?",
        ),
        (
            ["sources.fer2013.format=fer2031"],
            "sources.fer2013.format='fer2031' is not known; did you mean 'fer2013'? valid: affectnet, affwild2, "
            "csv_list, diffusionfer, expw, fer2013, ferplus, flat_folder, image_folder, kaggle_fer2013, mindface, "
            "rafdb",
        ),
        (
            ["sources.fer2013.label_space=basic8"],
            "sources.fer2013.label_space='basic8' is not known; did you mean 'basic7'? valid: abaw8, basic7, "
            "coarse5, ferplus8, negative4",
        ),
        (
            ["model.name=tiny_cn"],
            "unknown model.name 'tiny_cn'; did you mean 'tiny_cnn'",
        ),
        (
            ["student.model={name: vgg_fre}"],
            "unknown student.model.name 'vgg_fre'; did you mean 'vgg_fer'",
        ),
        (
            ["model.pretrained=true"],
            "model.pretrained=true but 'vgg_fer' is an engine net without downloadable weights",
        ),
        (
            ["train.soft_labels=true", "model.head=esr"],
            "train.soft_labels=true needs model.head=linear (one softmax over the classes), got 'esr'",
        ),
        (
            ["select.min_valence={Hapiness: 0}"],
            "select.min_valence names class 'Hapiness', which label space basic7 lacks",
        ),
    ],
)
def test_a_name_or_rule_the_engine_relies_on_is_checked_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _check(*overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_fixed_policy_may_sit_below_tau_min_which_it_does_not_read() -> None:
    _check("threshold.policy=fixed", "threshold.tau=0", "select.max_disagreement=0.5")  # disagreement-only select


def test_labelled_sources_of_two_label_spaces_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"campaign.labelled sources must share one label space, got \['basic7', "):
        _check(
            "sources.other.format=image_folder",
            "sources.other.path=.",
            "sources.other.label_space=ferplus8",
            "campaign.labelled=[fer2013, other]",
        )


def test_a_bad_policy_fails_the_campaign_job_before_it_writes_anything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = subprocess.run(
        [
            sys.executable,
            "jobs/campaign.py",
            "--config",
            "conf/demo.yaml",
            "--set",
            f"storage.root={root}",
            "--set",
            "threshold.policy=magic",
        ],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},  # nothing listens there: starting Ray would hang
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert done.stderr.startswith("error: threshold.policy='magic' is not known; valid: dtm_r, fixed")
    assert not root.exists()
