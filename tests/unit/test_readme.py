"""The README stays a front door: at most 250 lines, every figure generated from docs/results
(bench/readme_results.py), every relative link pointing at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures import load_script

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_is_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_the_readme_results_are_generated_from_the_result_pages() -> None:
    readme = (REPO / "README.md").read_text()
    gen = load_script("bench/readme_results.py", "readme_results")
    assert gen.rewrite(readme) == readme, "run python bench/readme_results.py and commit README.md"
    block = readme[readme.index(gen.BEGIN) : readme.index(gen.END)]
    assert "| one round, DTM-R τmin 0.5 | 0.484 ± 0.016 | 3 | 11 % |" in block  # ssl_fer2013.json, three seeds


def test_every_relative_link_of_the_readme_exists() -> None:
    readme = (REPO / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", readme) if "://" not in t]
    assert links and [t for t in links if not (REPO / t).exists()] == []
