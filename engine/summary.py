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
        f"  leakage      {c['leakage']:>10,}   "
        f"(val/test samples with a train twin: {c.get('eval_twins_of_train', 0):,})",
        f"  shards       {c['shards']:>10,}",
        f"  time         {c['seconds']:>10.1f} s   {c['images_per_s']:,.0f} images/s",
    ]
    print("\n".join(lines), flush=True)


def print_campaign_summary(cfg: Any, state: dict[str, Any]) -> None:
    """Per round: each stage (ran or skipped, counts), thresholds, selection and the student's macro-F1."""
    from engine.io import fs
    from engine.layout import CampaignLayout

    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    out = [f"campaign {cfg.campaign.name}  (storage {cfg.storage.root}; MLflow run {state.get('mlflow_run_id')})"]
    ran_any = False
    prepared = state.get("prepared") or {}
    for name, st in [*(prepared.get("ingest") or {}).items(), ("partition", prepared.get("partition"))]:
        if not st:
            continue
        ran_any |= not st["skipped"]
        label = name if name == "partition" else f"ingest {name}"
        ran = "skipped" if st["skipped"] else f"ran {st['seconds']:.1f} s"
        counts = ", ".join(f"{k}={v}" for k, v in st["counts"].items() if not isinstance(v, (dict, list)))
        out.append(f"{label:<16} {ran:<12} {counts}")
    for r in sorted(state["rounds"], key=int):
        doc = fs.read_json_or_none(lay.round(int(r)).state)
        if doc is None:
            continue
        out.append(f"round r{int(r):03d}:")
        for name, st in doc["stages"].items():
            ran_any |= not st["skipped"]
            counts = ", ".join(f"{k}={v}" for k, v in st["counts"].items() if not isinstance(v, (dict, list)))
            ran = "skipped" if st["skipped"] else f"ran {st['seconds']:.1f} s"
            out.append(f"  {name:<10} {ran:<12} {counts}")
        if doc.get("thresholds"):
            thr = ", ".join(f"{c} {t:.3f}" if t is not None else f"{c} never" for c, t in doc["thresholds"].items())
            out.append(f"  thresholds {thr}")
            q = doc["quality"]
            out.append(
                f"  selected   {q['selected']:,} of {q['pool']:,} (mask rate {q['mask_rate']:.3f}, "
                f"pseudo-label precision {q['precision']})"
            )
        m = doc["metrics"]
        out.append(
            "  student    "
            + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items() if not k.endswith("/n")
            )
        )
        out.append(f"  promoted   {state['rounds'][r].get('promoted')}")
    if state.get("stopped"):
        out.append(f"stopped: {state['stopped']}")
    wait = state.get("waiting_review")
    if wait:
        out.append(
            f"waiting for people: round r{wait['round']:03d}'s review batch is in {wait['dir']} (under the storage "
            "root); import their answers with `fer-engine review import EXPORT.json`, then run the campaign again"
        )
        ran_any = True
    out += [f"warning: {w}" for w in campaign_warnings(cfg, state)]
    if not ran_any:
        out.append("nothing to do: every stage was already committed")
    out.append(mlflow_ui_hint(cfg, state))
    print("\n".join(out), flush=True)


def campaign_warnings(cfg: Any, state: dict[str, Any]) -> list[str]:
    """What a user should not miss, once each, in the engine's words: quarantined inputs, classes no round
    pseudo-labelled, students not promoted."""
    from engine.io import fs
    from engine.layout import CampaignLayout, SourceLayout

    out = []
    for name, st in ((state.get("prepared") or {}).get("ingest") or {}).items():
        c = st.get("counts", {})
        if c.get("quarantined"):
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("by_reason", {}).items()))
            out.append(
                f"source {name}: {c['quarantined']:,} inputs quarantined ({reasons}); the rows and reasons are in "
                f"{SourceLayout(cfg.storage.root, name).quarantine}"
            )
    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    for r in sorted(state["rounds"], key=int):
        doc = fs.read_json_or_none(lay.round(int(r)).state)
        if doc is None:
            continue
        empty = [c for c, v in (doc.get("quality") or {}).get("per_class", {}).items() if not v.get("selected")]
        if empty:
            out.append(f"round r{int(r):03d}: no pseudo-label for {', '.join(empty)} (none passed its threshold)")
        entry = state["rounds"][r]
        if entry.get("promoted") is False:
            f1 = entry.get("val_macro_f1") or 0.0
            out.append(
                f"round r{int(r):03d}: the student was not promoted (val macro-F1 {f1:.4f} did not beat the "
                "teacher's); the next round keeps the teacher"
            )
    return out


def tracking_uri(cfg: Any, state: dict[str, Any]) -> str:
    """The campaign's MLflow tracking URI: the one stored in campaign.json, else the configured or default one."""
    if state.get("tracking_uri"):
        return str(state["tracking_uri"])
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    from engine.tracking import default_uri

    return default_uri(cfg.storage.root)


def mlflow_ui_hint(cfg: Any, state: dict[str, Any]) -> str:
    """One line telling how to browse the campaign's runs: ``mlflow ui --backend-store-uri …`` for a local store, and
    the address of the experiment's runs table (MLflow 3's UI otherwise opens on its GenAI view)."""
    uri = tracking_uri(cfg, state)
    exp = state.get("mlflow_experiment_id")
    page = f"/#/experiments/{exp}/runs?workflowType=machine_learning" if exp else ""
    if uri.startswith(("http://", "https://")):
        return f"MLflow: open {uri.rstrip('/')}{page or ''} (experiment {cfg.tracking.experiment})"
    return f"MLflow UI: mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000{page or '/'}"


def print_nothing_to_do(cfg: Any, state: dict[str, Any]) -> None:
    """One line for a campaign that is already complete with this config (plus the MLflow UI line)."""
    f1 = ", ".join(
        f"r{int(r):03d} val {v.get('val_macro_f1') or 0.0:.4f} / test {v.get('test_macro_f1') or 0.0:.4f}"
        for r, v in sorted(state.get("rounds", {}).items(), key=lambda kv: int(kv[0]))
    )
    stopped = f"; stopped: {state['stopped']}" if state.get("stopped") else ""
    print(
        f"nothing to do: campaign {cfg.campaign.name} in {cfg.storage.root} is complete with this config "
        f"(macro-F1 {f1}{stopped}); delete {cfg.storage.root} to run it again",
        flush=True,
    )
    print(mlflow_ui_hint(cfg, state), flush=True)
