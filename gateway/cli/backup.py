"""``mailmoat backup`` and ``mailmoat restore``: one checksummed archive of what matters."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.backup import backup, restore
from gateway.cli.common import Subparsers, settings_of


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """This group's sub-commands, each bound to its function."""
    make = sub.add_parser(
        "backup", parents=[common],
        help="store, quarantine, labels, users, models and rules into one archive",
    )  # fmt: skip
    make.add_argument("--to", type=Path, required=True, metavar="DIR")
    make.set_defaults(func=cmd_backup)
    back = sub.add_parser(
        "restore", parents=[common], help="check an archive, then put it where --config says"
    )
    back.add_argument("archive", type=Path)
    back.add_argument("--replace", action="store_true", help="over an existing store")
    back.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else None
    archive = backup(settings_of(args), config, args.to)
    print(f"wrote {archive}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Run it with the gateway and the console stopped: the store file is replaced."""
    config = Path(args.config) if args.config else None
    counts = restore(settings_of(args), config, args.archive, args.replace)
    print("restored " + ", ".join(f"{part}: {n} file(s)" for part, n in sorted(counts.items())))
    print("the archive's config/ is not restored: compare it with yours (tar -xzf ARCHIVE config)")
    return 0
