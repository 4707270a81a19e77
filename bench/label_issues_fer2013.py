"""Do cleanlab's label-issue flags find FER2013 labels that the FER+ crowd disagrees with?

On a seeded subset of the FER2013 Training split (original 7-class labels), the engine's curation path computes K-fold
out-of-fold probabilities (``engine.stages.curation.cross_val_probs``: the campaign model trained with the engine's
training step, one Ray task per fold) and flags label issues with cleanlab (``engine.stages.curation.find_issues``).
The FER+ majority label (Microsoft's rule: drop single votes, top count > half of the rest; -1 when there is none) is
the reference: a sample *disagrees* when it has a FER+ majority label in basic7 and that label differs from its FER2013
label. The script prints the disagreement rate among flagged samples, among a seeded random sample of the same size,
and over the whole subset (the random rate's expectation). Rows without a FER+ majority (or with Contempt / unknown)
are left out of the rates and counted separately.

It also prints the rate among the 10% of samples with the lowest cleanlab label quality (a ranking view that does not
depend on how many samples cleanlab flags, which grows as the model gets weaker).

Default budget (2 CPU cores): 6,000 images, tiny_cnn, 5 folds x 4 epochs (about 15 min on a busy 2-core machine). Run:
``PYTHONPATH=. .venv/bin/python bench/label_issues_fer2013.py [--n 6000 --folds 5 --epochs 4]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import ModelConfig, TrainConfig
from engine.labels import get_label_space
from engine.sources.fer2013 import FER2013_CLASSES, FERPLUS_EMOTIONS, VOTE_COLUMNS, ferplus_majority
from engine.stages.curation import assign_folds, cross_val_probs, find_issues

FER_DIR = Path(os.environ.get("FER2013_DIR", Path(__file__).resolve().parents[2] / "shared/data/fer2013"))


def load_subset(n: int, seed: int) -> tuple[list[str], list[bytes], np.ndarray, np.ndarray]:
    """Seeded subset of resolved FER2013 Training rows: paths, PNG bytes, basic7 labels, FER+ labels (-1 = none)."""
    space = get_label_space("basic7")
    rows = []
    with open(FER_DIR / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["usage"] == "Training" and int(r["fer2013_label"]) >= 0:
                rows.append(r)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False).tolist())
    rows = [rows[i] for i in pick]
    given = np.array([space.index(FER2013_CLASSES[int(r["fer2013_label"])]) for r in rows], dtype=np.int64)
    ferplus = []
    for r in rows:
        m = ferplus_majority([int(r[c]) for c in VOTE_COLUMNS])
        name = FERPLUS_EMOTIONS[m] if m >= 0 else None
        ferplus.append(space.index(name) if name and name != "contempt" else -1)
    wanted = {r["path"] for r in rows}
    images: dict[str, bytes] = {}
    with tarfile.open(FER_DIR / "fer2013_ferplus_png.tar") as tar:
        for m in tar:
            if m.name in wanted:
                f = tar.extractfile(m)
                assert f is not None
                images[m.name] = f.read()
    paths = [r["path"] for r in rows]
    return paths, [images[p] for p in paths], given, np.array(ferplus, dtype=np.int64)


def disagreement(idx: np.ndarray, given: np.ndarray, ferplus: np.ndarray) -> tuple[float, int, int]:
    """(rate, disagreeing, rows with a FER+ label) over the rows ``idx``."""
    has = idx[ferplus[idx] >= 0]
    dis = int((ferplus[has] != given[has]).sum())
    return (dis / len(has) if len(has) else float("nan")), dis, len(has)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=6000, help="FER2013 Training images in the subset")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument("--filter-by", default="prune_by_noise_rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    paths, images, given, ferplus = load_subset(args.n, args.seed)
    space = get_label_space("basic7")
    folds = assign_folds(paths, given, args.folds, args.seed)
    probs = cross_val_probs(
        images,
        given,
        folds,
        model_cfg=ModelConfig(name=args.model),
        train_cfg=TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, seed=args.seed),
        space=space,
        epochs=args.epochs,
        seed=args.seed,
    )
    is_issue, quality = find_issues(given, probs, filter_by=args.filter_by)
    flagged = np.flatnonzero(is_issue)
    rng = np.random.default_rng(args.seed + 1)
    random = np.sort(rng.choice(len(given), size=len(flagged), replace=False))
    r_flag = disagreement(flagged, given, ferplus)
    r_rand = disagreement(random, given, ferplus)
    r_all = disagreement(np.arange(len(given)), given, ferplus)
    print(
        f"FER2013 Training subset: {len(given)} images, {args.model}, {args.folds} folds x {args.epochs} epochs, "
        f"cleanlab {args.filter_by}; out-of-fold accuracy {(probs.argmax(1) == given).mean():.3f}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(f"flagged: {len(flagged)} ({len(flagged) / len(given):.1%} of the subset)")
    print(
        f"FER+ disagreement rate, flagged samples:       {r_flag[0]:.3f} ({r_flag[1]}/{r_flag[2]} with a FER+ label)"
    )
    print(
        f"FER+ disagreement rate, random sample (same n): {r_rand[0]:.3f} ({r_rand[1]}/{r_rand[2]} with a FER+ label)"
    )
    print(f"FER+ disagreement rate, whole subset:           {r_all[0]:.3f} ({r_all[1]}/{r_all[2]} with a FER+ label)")
    # Ranking view, independent of how many cleanlab flags: the 10% of samples with the lowest label quality.
    worst = np.argsort(quality, kind="stable")[: len(given) // 10]
    r_worst = disagreement(worst, given, ferplus)
    print(
        f"FER+ disagreement rate, lowest-quality 10% ({len(worst)}): {r_worst[0]:.3f} "
        f"({r_worst[1]}/{r_worst[2]} with a FER+ label)"
    )
    no_ref = int((ferplus[flagged] < 0).sum())
    print(f"flagged samples without a FER+ majority label (excluded above): {no_ref}")
    ray.shutdown()


if __name__ == "__main__":
    main()
