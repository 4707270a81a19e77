"""Evaluate a checkpoint on an ingested labelled source (ingesting it first if needed), e.g.
``python jobs/evaluate.py --config conf/fer2013.yaml --checkpoint teacher.pt --source fer2013 --split test``.
Rows flagged by the ingest leakage guard (twins of training rows) are left out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import cli
from engine.runtime import init_ray


def run(args: argparse.Namespace) -> None:
    cfg = cli.load(args)
    init_ray()
    from engine.products.evaluation import evaluate_checkpoint

    m = evaluate_checkpoint(cfg, args.checkpoint, args.source, split=args.split)
    print(
        f"checkpoint {m['checkpoint']} (fingerprint {m['checkpoint_fingerprint'][:12]}, {m['model_label_space']}) "
        f"on {m['source']}/{m['split']} ({m['data_label_space']})"
    )
    print(
        f"rows: {m['n']} evaluated of {m['labelled_rows']} labelled ({m['excluded_leakage']} with a train/val twin "
        f"left out, {m['excluded_unshared']} of classes the model lacks)"
    )
    print(f"classes: {', '.join(m['macro_f1_classes'])}")
    print(f"accuracy: {m['accuracy']:.4f}   macro-F1: {m['macro_f1']:.4f}")
    print("per-class F1: " + ", ".join(f"{c} {v['f1']:.3f} (n={v['support']})" for c, v in m["per_class"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
        print(f"metrics written to {args.out}")


if __name__ == "__main__":
    p = cli.parser(__doc__ or "")
    p.add_argument("--checkpoint", required=True, help="engine checkpoint (local path or URI)")
    p.add_argument("--source", required=True, help="a source of the config; ingested first when not yet committed")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--out", default=None, help="also write every metric as JSON to this file")
    cli.main(run, p)
