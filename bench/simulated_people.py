"""Simulated people for review benchmarks: they answer a review batch's Label Studio tasks from the ten FER+ crowd
votes of each FER2013 face (``../shared/data/fer2013/labels.csv``), and their answers come back as a Label Studio
JSON export, so the benchmark goes through the engine's real import.

- ``one_vote`` (the headline): one of the face's votes, drawn with a seeded hash of (seed, key), as one person of the
  crowd would answer. ``contempt`` (outside basic7) and ``unknown`` votes answer "unsure", ``NF`` "not a face".
- ``expert``: the vote majority (a tie between classes answers "unsure").
- ``oracle``: the FER2013 label that val and test use (separates the value of choosing well from people's noise).

    python bench/simulated_people.py EXPORT_FOLDER_OF_A_BATCH OUT.json --person one_vote
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PERSONS = ("one_vote", "expert", "oracle")
VOTE_COLUMNS = {
    "ferplus_neutral": "Neutral",
    "ferplus_happiness": "Happiness",
    "ferplus_surprise": "Surprise",
    "ferplus_sadness": "Sadness",
    "ferplus_anger": "Anger",
    "ferplus_disgust": "Disgust",
    "ferplus_fear": "Fear",
    "ferplus_contempt": "unsure",
    "ferplus_unknown": "unsure",
    "ferplus_NF": "not a face",
}
"""FER+ vote column → the answer a person gives in the engine's labeling config."""
FER2013_NAMES = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral")
"""``fer2013_label`` 0..6 → basic7 class name."""


def load_votes(labels_csv: Path) -> dict[str, dict[str, Any]]:
    """``path`` (``FER2013Train/fer0000000.png``) → ``{"votes": {answer: count}, "fer2013": name or None}``."""
    out = {}
    with open(labels_csv, newline="") as f:
        for row in csv.DictReader(f):
            votes: dict[str, int] = {}
            for col, answer in VOTE_COLUMNS.items():
                n = int(row[col] or 0)
                if n:
                    votes[answer] = votes.get(answer, 0) + n
            label = int(row["fer2013_label"])
            out[row["path"]] = {"votes": votes, "fer2013": FER2013_NAMES[label] if label >= 0 else None}
    return out


def _uniform(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"person:{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def answer(person: str, votes: dict[str, int], fer2013: str | None, *, key: str, seed: int) -> str | None:
    """What ``person`` answers about one face (None: no answer, a skipped task)."""
    if person == "oracle":
        return fer2013
    if not votes:
        return None
    if person == "expert":
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
        return "unsure" if len(ranked) > 1 and ranked[0][1] == ranked[1][1] else ranked[0][0]
    if person == "one_vote":
        u, total = _uniform(seed, key) * sum(votes.values()), 0
        for name, n in sorted(votes.items()):
            total += n
            if u < total:
                return name
        return sorted(votes)[-1]
    raise ValueError(f"unknown person {person!r}; one of {', '.join(PERSONS)}")


def export_for(
    tasks: list[dict[str, Any]], paths: dict[str, str], votes: dict[str, dict[str, Any]], person: str, seed: int
) -> list[dict[str, Any]]:
    """A Label Studio JSON export of ``tasks`` answered by ``person``: one annotation per answered task (a skipped
    one, ``was_cancelled``, where the person has no answer). ``paths``: engine key → FER2013 path."""
    out = []
    for i, t in enumerate(tasks):
        key = t["data"]["key"]
        face = votes[paths[key]]
        choice = answer(person, face["votes"], face["fer2013"], key=key, seed=seed)
        result = (
            []
            if choice is None
            else [{"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
        )
        ann = {
            "id": i + 1,
            "completed_by": f"simulated-{person}",
            "result": result,
            "was_cancelled": choice is None,
            "created_at": "2026-12-07T00:00:00Z",
            "lead_time": 0.0,
        }
        out.append({"id": i + 1, "data": t["data"], "annotations": [ann], "predictions": []})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("review_dir", help="a round's review folder (tasks.json, batch.parquet)")
    p.add_argument("out", help="where to write the Label Studio JSON export")
    p.add_argument("--person", choices=PERSONS, default="one_vote")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default=str(REPO.parent / "shared/data/fer2013/labels.csv"))
    p.add_argument("--root", required=True, help="the storage root (manifests give each key's FER2013 path)")
    args = p.parse_args(argv)
    tasks = json.loads((Path(args.review_dir) / "tasks.json").read_text())
    paths = key_paths(args.root, [t["data"]["key"] for t in tasks])
    Path(args.out).write_text(
        json.dumps(export_for(tasks, paths, load_votes(Path(args.labels)), args.person, args.seed))
    )


def key_paths(root: str, keys: list[str]) -> dict[str, str]:
    """Engine key → FER2013 path (``orig_path`` of the manifest rows, relative to the tar's members)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    m = pq.read_table(Path(root) / "sources/fer2013/manifest", columns=["key", "orig_path"])
    m = m.filter(pc.is_in(m["key"], value_set=pa.array(keys)))
    return {k: _fer_path(p) for k, p in zip(m["key"].to_pylist(), m["orig_path"].to_pylist(), strict=True)}


def _fer_path(orig: str) -> str:
    """``FER2013Train/fer0000000.png`` from a manifest ``orig_path`` (which may carry the tar's name in front)."""
    parts = orig.replace("\\", "/").split("/")
    i = next(j for j, s in enumerate(parts) if s.startswith("FER2013"))
    return "/".join(parts[i:])


if __name__ == "__main__":
    main()
