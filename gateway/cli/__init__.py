"""The ``mailmoat`` command: a table of command groups, one module each.

| group                         | module      |
|-------------------------------|-------------|
| serve                         | serve.py    |
| scan, config check            | scan.py     |
| events list/show/purge, label | events.py   |
| rules lint/test/replay/...    | rules.py    |
| web, users                    | console.py  |
| quarantine                    | quarantine.py |
| init                          | init.py     |
| backup, restore               | backup.py   |
| report daily                  | report.py   |
| model, learn (analysts)       | training/cli.py, loaded only for them |

Each module's ``add_parsers`` declares its sub-commands and binds each to its function
(``func``); ``main`` calls it and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from gateway import __version__
from gateway.cli import (
    backup,
    console,
    events,
    init,
    quarantine,
    report,
    rules,
    scan,
    serve,
    store,
)
from gateway.cli.common import settings_of, setup_logging
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger(__name__)

COMMANDS = (serve, scan, events, rules, console, quarantine, init, backup, report, store)
TRAINING_COMMANDS = ("model", "learn")


def build_parser(with_training: bool = False) -> argparse.ArgumentParser:
    """Every command group's parsers under one ``mailmoat`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", "-c", metavar="FILE", help="TOML config (default: embedded defaults)"
    )
    common.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING, ERROR (default: INFO for serve, its events; WARNING else)",
    )
    parser = argparse.ArgumentParser(
        prog="mailmoat",
        description=__doc__.splitlines()[0],
        epilog="Analysts' commands: mailmoat model {dataset,train,evaluate,promote,rollback,"
        "list,show} and mailmoat learn (see `mailmoat model --help`).",
    )
    parser.add_argument("--version", action="version", version=f"mailmoat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMANDS:
        group.add_parsers(sub, common)
    if with_training:
        # The analysts' commands live in training/; the gateway loads them only for these.
        from training.cli import add_model_parser

        add_model_parser(sub, common)
    return parser


def log_level(command: str, given: str | None) -> str:
    """The level asked for; else INFO for serve (each event reaches the journal), WARNING."""
    if given:
        return given
    return "INFO" if command == "serve" else "WARNING"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mailmoat`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_training=bool(arguments) and arguments[0] in TRAINING_COMMANDS)
    args = parser.parse_args(arguments)
    setup_logging(log_level(args.command, args.log_level), events_to_stderr=args.command == "serve")
    started = time.perf_counter()
    try:
        if args.command in TRAINING_COMMANDS:
            status: int = args.func(args, settings_of(args))
        else:
            status = args.func(args)
    except (ConfigError, ValueError) as exc:  # bad settings or arguments
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:  # an unknown id, a store or backend failure
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mailmoat events list --json | head`: the reader has what it wanted. Quietly, as
        # the Python docs advise: stdout goes to /dev/null so the exit flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    log.debug("done in %.1f ms", (time.perf_counter() - started) * 1000)
    return status
