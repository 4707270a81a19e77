"""Shared argument parsing and error handling of the thin ``jobs/`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from engine.config import Config, load_config
from engine.errors import EngineError
from engine.logs import setup_logging


def parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the common ``--config`` (repeatable) and ``--set a.b=c`` (repeatable) options."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", action="append", default=[], help="YAML config file; later files override earlier")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set storage.root=/data/runs",
    )
    return p


def load(args: argparse.Namespace) -> Config:
    """The Config of parsed ``--config`` and ``--set`` arguments."""
    return load_config(args.config, args.overrides)


def main(
    run: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> None:
    """Parse, set up logging, call ``run``; an EngineError becomes one clear line and exit code 2."""
    args = p.parse_args(argv)
    setup_logging()
    try:
        run(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
