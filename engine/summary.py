"""One-screen summaries that jobs print at the end of each stage."""

from __future__ import annotations

from typing import Any

from engine.fingerprint import short


def print_ingest_summary(source: str, result: Any) -> None:
    """Inputs, kept, quarantined by reason, duplicates, leakage, shards, seconds and images/s of one ingest."""
    c = result.counts
    state = "skipped (already committed, nothing to do)" if result.skipped else "done"
    lines = [
        f"ingest {source}: {state}  fingerprint {short(result.fingerprint)}",
        f"  inputs       {c['inputs']:>10,}",
        f"  kept         {c['kept']:>10,}   by split: "
        + ", ".join(f"{k} {v:,}" for k, v in c.get("by_split", {}).items()),
        f"  quarantined  {c['quarantined']:>10,}   by reason: "
        + (", ".join(f"{k} {v:,}" for k, v in c.get("by_reason", {}).items()) or "none"),
        f"  duplicates   {c['duplicates']:>10,}",
        f"  leakage      {c['leakage']:>10,}   (val/test samples with a train twin: {c.get('eval_twins_of_train', 0):,})",
        f"  shards       {c['shards']:>10,}",
        f"  time         {c['seconds']:>10.1f} s   {c['images_per_s']:,.0f} images/s",
    ]
    print("\n".join(lines), flush=True)
