"""Shared argument parsing and error handling of the thin ``jobs/`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from engine.config import Config, load_config
from engine.errors import EngineError
from engine.logs import setup_logging


def parser(description: str, *, config: bool = True, set_help: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with the common ``--config`` (repeatable; unless ``config=False``) and ``--set a.b=c``
    (repeatable) options."""
    p = argparse.ArgumentParser(description=description)
    if config:
        p.add_argument("--config", action="append", default=[], help="YAML config file; later files override earlier")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=set_help or "override one config value, e.g. --set storage.root=/data/runs",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own output (worker logs, Ray Data progress blocks); by default it stays in Ray's logs",
    )
    return p


def run_campaign_job(args: argparse.Namespace, max_rounds: int | None) -> None:
    """The body of jobs/campaign.py and jobs/pseudo_round.py: say "nothing to do" without starting Ray or MLflow
    when the campaign is complete with this config, else run up to ``max_rounds`` new rounds and print the summary."""
    from engine.campaign import check_inputs, completed, run_campaign
    from engine.runtime import init_ray
    from engine.summary import print_campaign_summary, print_nothing_to_do

    cfg = load(args)
    check_inputs(cfg)
    done = completed(cfg)
    if done is not None:  # only campaign.json was read
        print_nothing_to_do(cfg, done)
        return
    init_ray()
    print_campaign_summary(cfg, run_campaign(cfg, max_rounds=max_rounds))


def load(args: argparse.Namespace) -> Config:
    """The Config of parsed ``--config`` and ``--set`` arguments."""
    return load_config(args.config, args.overrides)


def main(
    run: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> None:
    """Parse, set up logging, call ``run``; an EngineError becomes one clear line and exit code 2."""
    args = p.parse_args(argv)
    setup_logging(verbose=getattr(args, "verbose", False))
    try:
        run(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
