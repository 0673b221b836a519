"""``mailmoat quarantine``: list, show, release, delete."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from gateway.cli.common import Subparsers, fmt_time, settings_of
from gateway.config import Settings
from gateway.context import new_connection_id
from gateway.events import EventKind, SecurityEvent
from gateway.quarantine import Quarantine
from gateway.store import Store, open_store


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    quarantine = sub.add_parser("quarantine", help="held messages")
    q_sub = quarantine.add_subparsers(dest="qcommand", required=True)
    qlist = q_sub.add_parser("list", parents=[common])
    qlist.add_argument("--all", action="store_true", help="include released and deleted")
    qlist.add_argument("--limit", type=int, default=100)
    qlist.add_argument("--json", action="store_true")
    qlist.set_defaults(func=_list)
    digest = q_sub.add_parser(
        "digest", parents=[common], help="mail each recipient their held messages, with links"
    )
    digest.add_argument("--since", default="24h", help="held since (default 24h)")
    digest.set_defaults(func=_digest)
    for name, text, func in (
        ("show", "metadata (or --raw bytes)", _show),
        ("release", "deliver to the backend", _release_command),
        ("delete", "discard for good", _delete),
    ):
        qcmd = q_sub.add_parser(name, parents=[common], help=text)
        qcmd.add_argument("id")
        if name == "show":
            qcmd.add_argument("--raw", action="store_true", help="print the message bytes")
        qcmd.set_defaults(func=func)


def _open(args: argparse.Namespace) -> tuple[Store, Quarantine]:
    settings = settings_of(args)
    store = open_store(settings.store)
    return store, Quarantine(settings.store.quarantine_dir, store)


def _list(args: argparse.Namespace) -> int:
    store, quarantine = _open(args)
    try:
        for entry in quarantine.list(status=None if args.all else "held", limit=args.limit):
            if args.json:
                print(json.dumps(entry.to_dict(), ensure_ascii=False))
            else:
                score = "" if entry.score is None else f"{entry.score:g}"
                route = f"{entry.mail_from or '<>'} -> {','.join(entry.rcpts)}"
                print(
                    f"{entry.id}  {fmt_time(entry.time)}  {entry.status:<8} {score:>6}  "
                    f"{route}  {entry.subject[:60]}"
                )
    finally:
        store.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    store, quarantine = _open(args)
    try:
        entry = quarantine.get(args.id)
        if args.raw:
            sys.stdout.buffer.write(quarantine.read(args.id))
        else:
            print(json.dumps(entry.to_dict(), ensure_ascii=False, indent=2))
    finally:
        store.close()
    return 0


def _delete(args: argparse.Namespace) -> int:
    store, quarantine = _open(args)
    try:
        quarantine.set_status(args.id, "deleted")
        store.add(
            SecurityEvent(
                id=f"{new_connection_id()}.1",
                kind=EventKind.QUARANTINE_DELETE,
                action="delete",
                details={"quarantine_id": args.id},
            )
        )
        print(f"deleted {args.id}")
    finally:
        store.close()
    return 0


def _digest(args: argparse.Namespace) -> int:
    """One digest per recipient with held messages, sent through the backend."""
    from gateway.digest import LinkSigner, digest_message, held_by_recipient
    from gateway.events import parse_time
    from gateway.relay import deliver, make_backend
    from gateway.web.security import secret_key

    settings = settings_of(args)
    web = settings.web
    signer = LinkSigner(secret_key(web.secret_key, web.secret_file), web.digest_link_hours)
    store, quarantine = _open(args)
    try:
        groups = held_by_recipient(quarantine, parse_time(args.since))
    finally:
        store.close()
    sender = f"quarantine@{settings.server.identity}"
    backend = make_backend(settings.backend, settings.server.identity)
    failed = 0
    for recipient, entries in sorted(groups.items()):
        raw = digest_message(recipient, entries, signer, web.public_url, sender)
        delivered = asyncio.run(deliver(backend, sender, [recipient], raw))
        print(f"{recipient}: {len(entries)} held, digest {delivered.reply}")
        failed += not delivered.ok
    if not groups:
        print("nothing held: no digest sent")
    return 1 if failed else 0


def _release_command(args: argparse.Namespace) -> int:
    return asyncio.run(_release(settings_of(args), args.id))


async def _release(settings: Settings, message_id: str) -> int:
    from gateway.service import Gateway

    gateway = Gateway(settings)
    try:
        reply = await gateway.release(message_id, actor=os.environ.get("USER", "cli"))
    finally:
        await gateway.aclose()
    if reply.ok:
        print(f"released {message_id}: {reply}")
        return 0
    print(f"release of {message_id} failed, still held: {reply}", file=sys.stderr)
    return 1
