"""The documentation site: ``mkdocs build --strict`` (a broken link, a missing anchor or a page left out of the
navigation fails it), then the built home and configuration-reference pages opened in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import Config
from tests.integration.test_report_export import CHROMIUM, CHROMIUM_ARGS
from tests.unit.test_reference import _dataclass_keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_site_builds_strict_and_its_pages_open_in_chromium(site: Path, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((site / "index.html").as_uri())
        page.wait_for_load_state("load")
        title = page.text_content("article h1")
        nav = page.eval_on_selector_all("nav.md-nav--primary a.md-nav__link", "els => els.map(e => e.textContent)")
        picture = page.eval_on_selector("article img", "e => e.complete ? e.naturalWidth : 0")
        page.screenshot(path=str(tmp_path / "home.png"))
        page.goto((site / "reference" / "config" / "index.html").as_uri())
        page.wait_for_load_state("load")
        keys = page.eval_on_selector_all(
            "article table tbody tr td:first-child code", "els => els.map(e => e.textContent)"
        )
        browser.close()
    assert title is not None and title.replace("¶", "").strip() == "fer-engine"  # ¶: the heading's permalink
    names = [" ".join(n.split()) for n in nav]
    for wanted in ("Getting started", "Configuration", "Troubleshooting", "Command line", "Two drivers"):
        assert wanted in names
    assert picture == 960  # the architecture drawing (an SVG 960 wide) loaded
    assert set(keys) == _dataclass_keys("", Config) - {"sources.<name>.name"}  # every key, rendered as a table row
