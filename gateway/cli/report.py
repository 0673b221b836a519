"""``mailmoat report daily``: the shift's report, as files or as a mail."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.cli.common import Subparsers, settings_of


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """This group's sub-commands, each bound to its function."""
    report = sub.add_parser("report", help="reports for the people who run the gateway")
    r_sub = report.add_subparsers(dest="report", required=True)
    daily = r_sub.add_parser("daily", parents=[common], help="the last day, HTML and text")
    daily.add_argument("--out", type=Path, metavar="FILE", help="write FILE (.html) and .txt")
    daily.add_argument("--mail", metavar="TO", help="mail it through the backend to TO")
    daily.set_defaults(func=cmd_daily)


def cmd_daily(args: argparse.Namespace) -> int:
    from gateway.relay import deliver, make_backend
    from gateway.report import daily, write

    settings = settings_of(args)
    report = daily(settings)
    if args.out is None and args.mail is None:
        print(report.text)
        return 0
    if args.out is not None:
        for path in write(report, args.out):
            print(f"wrote {path}")
    if args.mail is not None:
        sender = f"mailmoat@{settings.server.identity}"
        backend = make_backend(settings.backend, settings.server.identity)
        delivered = asyncio.run(
            deliver(backend, sender, [args.mail], report.message(sender, args.mail))
        )
        if not delivered.ok:
            print(f"mailmoat: the backend refused the report: {delivered.reply}", file=sys.stderr)
            return 1
        print(f"mailed to {args.mail}: {delivered.reply}")
    return 0
