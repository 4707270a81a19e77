"""The README's results table, generated from the dated result pages' JSON (docs/results/*.json), so a figure has
one source: ``python bench/readme_results.py`` rewrites the block between the README's ``results`` markers;
``--check`` exits 1 when the committed block differs (tests/unit/test_readme.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin (bench/readme_results.py) -->", "<!-- results:end -->"

ROWS = (
    ("ssl_fer2013", "sup10", "supervised, 10 % of the labels (2,727 faces)"),
    ("ssl_fer2013", "sup100", "supervised, 100 % of the labels"),
    ("ssl_fer2013", "fixed95", "one round, fixed threshold 0.95 (FixMatch's rule)"),
    ("ssl_fer2013", "dtmr05", "one round, DTM-R τmin 0.5"),
    ("ssl_fer2013", "recipe", "one round, the recipe (DTM-R + a wider, noisier student)"),
    ("ssl_fer2013_cpu3", "recipe", "the recipe, up to three rounds"),
)
"""(result page, row, what the README calls it): the headline rows, each with every seed its page holds."""


def _f1s(page: str, row: str) -> list[float]:
    data = json.loads((REPO / "docs/results" / f"{page}.json").read_text())
    return [r["test_f1"] for r in data if r["row"] == row]


def table() -> str:
    """The Markdown block between the markers (markers included)."""
    base, full = statistics.mean(_f1s("ssl_fer2013", "sup10")), statistics.mean(_f1s("ssl_fer2013", "sup100"))
    lines = [
        BEGIN,
        "| FER2013, vgg_fer, 2 CPU cores | test macro-F1 | seeds | gap to 100 % labels recovered | page |",
        "|---|---|---|---|---|",
    ]
    for page, row, label in ROWS:
        f1 = _f1s(page, row)
        mean = statistics.mean(f1)
        spread = f" ± {statistics.stdev(f1):.3f}" if len(f1) > 1 else ""
        gap = "" if row.startswith("sup") else f"{100 * (mean - base) / (full - base):.0f} %"
        lines.append(f"| {label} | {mean:.3f}{spread} | {len(f1)} | {gap} | [{page}](docs/results/{page}.md) |")
    lines.append(END)
    return "\n".join(lines)


def rewrite(readme: str) -> str:
    """``readme`` with its results block replaced by a fresh :func:`table`."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + table() + readme[end:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when README.md's block differs; write nothing")
    args = p.parse_args()
    path = REPO / "README.md"
    text = path.read_text()
    fresh = rewrite(text)
    if args.check:
        sys.exit(0 if fresh == text else 1)
    path.write_text(fresh)
    print(table())


if __name__ == "__main__":
    main()
