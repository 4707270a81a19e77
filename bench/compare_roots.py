"""Compare two storage roots file by file: what a refactor changed in a campaign's committed outputs.

Usage:
    python bench/compare_roots.py OLD_ROOT NEW_ROOT

Every file present in both roots is compared byte for byte; a JSON file that differs is compared again with its
volatile keys dropped (timings, run ids, paths that name the root); an engine checkpoint (``*.pt`` written by
``save_checkpoint``) that differs is compared tensor by tensor, then metadata without those keys. Ray Train's run
folders, MLflow's store and artifacts, writer locks and report.html (a rendering of the files compared, with timings
and run ids) are left out. Prints the files only in one root, every file
that differs in substance, and the counts; exits 1 when anything differs in substance.

Typical use: run the same tiny campaign with the old and the new code into two roots (``git worktree add`` for
the old checkout and ``PYTHONPATH`` pointing at it), then compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

VOLATILE = {
    "seconds",
    "images_per_s",
    "mlflow_run_id",
    "tracking_uri",
    "first_step_at",
    "call_id",
    "run_path",
    "ray_checkpoint",
    "started",
    "finished",
    "val_seconds",
    "config_fingerprint",
}
"""Keys whose values change from run to run whatever the code does (``config_fingerprint`` covers storage.root)."""
LEFT_OUT = {"ray", "mlartifacts"}


def files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not LEFT_OUT & set(p.relative_to(root).parts)
        and p.suffix not in (".db", ".lock")
        and p.name != "report.html"  # renders the files compared here, with timings and run ids
        and not p.name.startswith("mlflow")
    }


def strip(obj: Any, roots: tuple[str, str]) -> Any:
    """``obj`` without volatile keys, with either root replaced by ``<root>``."""
    if isinstance(obj, dict):
        return {k: strip(v, roots) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "<root>")
    return obj


def same_checkpoint(a: Path, b: Path, roots: tuple[str, str]) -> bool:
    import torch

    x, y = torch.load(a, weights_only=True, map_location="cpu"), torch.load(b, weights_only=True, map_location="cpu")
    sx, sy = x.pop("state_dict"), y.pop("state_dict")
    if sx.keys() != sy.keys() or not all(torch.equal(sx[k], sy[k]) for k in sx):
        return False
    x.pop("fingerprint", None), y.pop("fingerprint", None)  # over the metadata, timings included
    return bool(strip(x, roots) == strip(y, roots))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = p.parse_args(argv)
    roots = (str(args.old.resolve()), str(args.new.resolve()))
    a, b = files(args.old), files(args.new)
    only = sorted(set(a) ^ set(b))
    for name in only:
        print(f"only in {'old' if name in a else 'new'}: {name}")
    identical = volatile_only = 0
    differ = []
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.read_bytes() == y.read_bytes():
            identical += 1
        elif (
            name.endswith(".json")
            and strip(json.loads(x.read_bytes()), roots) == strip(json.loads(y.read_bytes()), roots)
        ) or (name.endswith(".pt") and same_checkpoint(x, y, roots)):
            volatile_only += 1
        else:
            differ.append(name)
    for name in differ:
        print(f"differs: {name}")
    print(
        f"{identical} files byte-identical, {volatile_only} equal but for timings / run ids / the root "
        f"(JSON, checkpoint tensors), {len(differ)} differ, {len(only)} in one root only"
    )
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main())
