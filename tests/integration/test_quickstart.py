"""The README's quickstart, run exactly as written (the commands between its ``quickstart`` markers), in a folder
that holds the checkout's Makefile, pyproject.toml, conf/ and .venv/ beside a tiny ``my_faces/`` of real FER2013
faces: a newcomer's first campaign on their own folder, in three commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.fixtures import fer_images

REPO = Path(__file__).resolve().parents[2]
CLASS_FOLDERS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013's label codes 0..6


def readme_quickstart() -> list[str]:
    """The shell commands of the README's quickstart block, in order."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin[^>]*-->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert block is not None, "README.md lost its quickstart markers"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _write_faces(root: Path) -> int:
    """``root/{train,val,test}/<class>/`` and ``root/unlabelled/`` of real faces; returns the number of files."""
    n = 0
    for split, folder, count, start in (
        ("train", "FER2013Train", 280, 0),
        ("val", "FER2013Valid", 70, 0),
        ("test", "FER2013Test", 70, 0),
        ("unlabelled", "FER2013Train", 140, 280),
    ):
        for img in fer_images(start + count, folder)[start:]:
            sub = root / split if split == "unlabelled" else root / split / CLASS_FOLDERS[img.label]
            sub.mkdir(parents=True, exist_ok=True)
            (sub / Path(img.member).name).write_bytes(img.png)
            n += 1
    return n


def test_the_readme_quickstart_runs_as_written_on_a_folder_of_faces(ray_local, tmp_path):
    commands = readme_quickstart()
    assert len(commands) <= 3
    for name in ("Makefile", "pyproject.toml", "conf", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    files = _write_faces(tmp_path / "my_faces")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}  # the suite's Ray
    outputs = []
    for cmd in commands:
        done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    state = json.loads((tmp_path / "runs/my_faces/campaigns/my_faces/campaign.json").read_text())
    assert {r: s["status"] for r, s in state["rounds"].items()} == {"0": "done", "1": "done"}
    status = outputs[-1].splitlines()
    row = next(line.split() for line in status if line.startswith("my_faces "))
    kept, quarantined = int(row[2].replace(",", "")), int(row[3].replace(",", ""))
    assert row[1] == "committed" and kept + quarantined == files
    assert "campaign my_faces: partition committed, teacher r00" in outputs[-1]
