"""``mailmoat web`` (the review console) and ``mailmoat users``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from gateway.cli.common import Subparsers, settings_of, store_of
from gateway.store import Store


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    web = sub.add_parser("web", parents=[common], help="run the review console")
    web.add_argument("--listen", help="HOST:PORT (default: [web] listen, 127.0.0.1:8025)")
    web.set_defaults(func=cmd_web)
    users = sub.add_parser("users", help="console users")
    u_sub = users.add_subparsers(dest="ucommand", required=True)
    uadd = u_sub.add_parser("add", parents=[common], help="create a user or set a password")
    uadd.add_argument("name")
    uadd.add_argument("--role", choices=["viewer", "analyst", "admin"], default="viewer")
    uadd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    uadd.set_defaults(func=_users_add)
    u_sub.add_parser("list", parents=[common]).set_defaults(func=_users_list)
    uhash = u_sub.add_parser(
        "hash", parents=[common], help="an argon2 hash for [server] submission_users lines"
    )
    uhash.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    uhash.set_defaults(func=_users_hash)
    urole = u_sub.add_parser("role", parents=[common])
    urole.add_argument("name")
    urole.add_argument("role", choices=["viewer", "analyst", "admin"])
    urole.set_defaults(func=_users_role)
    for name in ("disable", "enable"):
        command = u_sub.add_parser(name, parents=[common])
        command.add_argument("name")
        command.set_defaults(func=lambda args, off=name == "disable": _users_enable(args, off))


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.config import parse_hostport
    from gateway.web.app import create_app

    settings = settings_of(args)
    host, port = parse_hostport(args.listen or settings.web.listen)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", server_header=False)
    return 0


def _users_add(args: argparse.Namespace) -> int:
    import getpass

    from gateway.web.security import hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
    if not args.name.isidentifier():
        raise ValueError("user names are letters, digits and _")
    with _store(args) as store:
        store.add_user(args.name, hash_password(password), args.role)
    print(f"saved {args.name} ({args.role})")
    return 0


def _users_hash(args: argparse.Namespace) -> int:
    """Print a hash to put after 'name:' in the submission users file."""
    import getpass

    from gateway.web.security import hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    print(hash_password(password))
    return 0


def _users_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        for user in store.users():
            state = " (disabled)" if user["disabled"] else ""
            print(f"{user['name']:<20} {user['role']:<8}{state}")
    return 0


def _users_role(args: argparse.Namespace) -> int:
    with _store(args) as store:
        store.set_user(args.name, role=args.role)
    return 0


def _users_enable(args: argparse.Namespace, disabled: bool) -> int:
    with _store(args) as store:
        store.set_user(args.name, disabled=disabled)
    return 0


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[Store]:
    store = store_of(args)
    try:
        yield store
    finally:
        store.close()
