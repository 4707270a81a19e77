"""Two campaign drivers on one new storage root, the second started N seconds after the first, repeated: the first
must always complete, the second must always be refused in one line (exit code 2) naming the first, and the root's
MLflow store must hold one campaign run. Prints one line per trial and a table per gap.

Each trial is a tiny campaign (conf/demo.yaml with the test suite's tiny settings: 150 FER2013 faces per split,
tiny_cnn, one epoch) in a fresh root under --root, so ingest, the MLflow store and every round are new each time.

Usage: python bench/two_drivers.py [--gaps 1 3 10] [--trials 10] [--root runs/two_drivers]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.processes import tiny_overrides  # noqa: E402  (the suite's tiny campaign settings)


def _campaign_runs(root: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.data.tags.get("engine.campaign", "?") for r in runs if "mlflow.parentRunId" not in r.data.tags]


def trial(root: Path, gap_s: float, fer2013_dir: Path) -> dict[str, object]:
    """One race on a fresh ``root``: what each driver did and what the store holds."""
    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "jobs/campaign.py", "--config", "conf/demo.yaml", *tiny_overrides(root, fer2013_dir, 1)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each driver would start its own Ray
    t0 = time.monotonic()
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(gap_s)
    second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out2, err2 = second.communicate(timeout=900)
    t_second = time.monotonic() - t0
    _, err1 = first.communicate(timeout=900)
    lines2 = err2.strip().splitlines()
    refused = (
        second.returncode == 2
        and not out2
        and len(lines2) == 1
        and lines2[0].startswith(f"error: campaign demo: {root}/campaigns/demo is being written by pid {first.pid} ")
    )
    return {
        "first_rc": first.returncode,
        "second_rc": second.returncode,
        "second_refused_in_one_line": refused,
        "second_s": round(t_second - gap_s, 1),
        "first_s": round(time.monotonic() - t0, 1),
        "campaign_runs": _campaign_runs(root) if (root / "mlflow.db").exists() else [],
        "second_stderr": lines2[-1] if lines2 else "",
        "first_stderr_tail": err1.strip().splitlines()[-1:] if first.returncode else [],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gaps", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="seconds between the starts")
    p.add_argument("--trials", type=int, default=10, help="races per gap")
    p.add_argument("--root", default="runs/two_drivers", help="folder for the trials' roots (emptied each trial)")
    p.add_argument("--fer2013", default=str(REPO.parent / "shared/data/fer2013"), help="FER2013 data folder")
    args = p.parse_args()
    summary = []
    for gap in args.gaps:
        ok = 0
        for i in range(args.trials):
            r = trial(Path(args.root).resolve() / f"gap{gap:g}", gap, Path(args.fer2013))
            good = r["first_rc"] == 0 and r["second_refused_in_one_line"] and r["campaign_runs"] == ["demo"]
            ok += good
            print(
                f"gap {gap:g} s trial {i + 1}: {'ok' if good else 'FAILED'}  first rc {r['first_rc']} "
                f"({r['first_s']} s), second rc {r['second_rc']} after {r['second_s']} s, campaign runs "
                f"{r['campaign_runs']}; second said: {r['second_stderr'][:140]}"
                + (f"; first said: {r['first_stderr_tail']}" if r["first_stderr_tail"] else ""),
                flush=True,
            )
        summary.append((gap, ok))
    print("\ngap (s)  trials  first completed, second refused in one line, one campaign run")
    for gap, ok in summary:
        print(f"{gap:7g}  {args.trials:6d}  {ok}")


if __name__ == "__main__":
    main()
