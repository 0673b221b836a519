"""``mailmoat store migrate``: bring the PostgreSQL schema to this version's."""

from __future__ import annotations

import argparse

from gateway.cli.common import Subparsers, settings_of


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """This group's sub-commands, each bound to its function."""
    store = sub.add_parser("store", help="the store's schema")
    s_sub = store.add_subparsers(dest="store", required=True)
    migrate = s_sub.add_parser(
        "migrate", parents=[common], help="apply the schema migrations not applied yet"
    )
    migrate.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if not settings.store.url:
        print(f"{settings.store.database}: the SQLite store creates its tables itself")
        return 0
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(settings.store.url, timeout=settings.store.timeout, check_schema=False)
    try:
        applied = store.migrate()
        version = store.schema_version()
    finally:
        store.close()
    done = ", ".join(map(str, applied)) if applied else "none (already up to date)"
    print(f"{store.location}: migrations applied: {done}; schema version {version}")
    return 0
