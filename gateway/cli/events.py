"""``mailmoat events`` (list, show, purge) and ``mailmoat label``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from gateway.cli.common import Subparsers, fmt_time, store_of
from gateway.errors import UnknownIdError
from gateway.events import EventFilter, SecurityEvent, parse_time
from gateway.store import Store


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    events = sub.add_parser("events", help="security events")
    events_sub = events.add_subparsers(dest="ecommand", required=True)
    elist = events_sub.add_parser("list", parents=[common], help="list events, newest first")
    elist.add_argument("--since", help="e.g. 2h, 7d or an ISO time")
    elist.add_argument("--until")
    elist.add_argument("--action")
    elist.add_argument("--sender")
    elist.add_argument("--symbol")
    elist.add_argument("--kind")
    elist.add_argument("--limit", type=int, default=100)
    elist.add_argument("--json", action="store_true")
    elist.set_defaults(func=cmd_events_list)
    eshow = events_sub.add_parser("show", parents=[common], help="one event in full")
    eshow.add_argument("id")
    eshow.add_argument("--json", action="store_true")
    eshow.set_defaults(func=cmd_events_show)
    epurge = events_sub.add_parser(
        "purge", parents=[common], help="drop expired raw messages (feature snapshots stay)"
    )
    epurge.add_argument("--events-older-than", metavar="T", help="also drop unlabelled events")
    epurge.set_defaults(func=cmd_events_purge)

    label = sub.add_parser("label", parents=[common], help="label events for retraining")
    label.add_argument("id", help="an event id, or - to read ids from stdin (one a line)")
    label.add_argument("label", nargs="?", choices=["spam", "ham", "phish", "malware"])
    label.add_argument("--note", default="")
    label.add_argument("--by", default=os.environ.get("USER", "cli"), help="who labels")
    label.add_argument("--withdraw", action="store_true", help="withdraw the event's labels")
    label.add_argument("--history", action="store_true", help="show the label history")
    label.add_argument("--json", action="store_true")
    label.set_defaults(func=cmd_label)


def _event_line(event: SecurityEvent) -> str:
    score = "" if event.score is None else f"{event.score:g}"
    rcpts = ",".join(event.rcpts)
    return (
        f"{event.id}  {fmt_time(event.time)}  {event.kind:<18} {event.action:<10} {score:>6}  "
        f"{event.client_ip:<15} {event.mail_from or '<>'} -> {rcpts}  {event.subject[:60]}"
    )


def cmd_events_list(args: argparse.Namespace) -> int:
    where = EventFilter(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        action=args.action,
        sender=args.sender,
        symbol=args.symbol,
        kind=args.kind,
        limit=args.limit,
    )
    store = store_of(args)
    try:
        for event in store.list(where):
            print(
                json.dumps(event.to_dict(), ensure_ascii=False) if args.json else _event_line(event)
            )
    finally:
        store.close()
    return 0


def cmd_events_show(args: argparse.Namespace) -> int:
    store = store_of(args)
    try:
        event = store.get(args.id)
    finally:
        store.close()
    if args.json:
        print(json.dumps(event.to_dict(), ensure_ascii=False, indent=2))
        return 0
    data = event.to_dict()
    for key in (
        "id",
        "kind",
        "action",
        "score",
        "reason",
        "client_ip",
        "helo",
        "tls",
        "mail_from",
        "rcpts",
        "message_id",
        "subject",
        "size",
        "smtp_reply",
        "backend_reply",
    ):
        print(f"{key:<14} {data[key]}")
    print(f"{'time':<14} {fmt_time(event.time)}")
    print("symbols:")
    for sym in event.symbols:
        print(
            f"  {sym['name']:<28} {sym.get('score', 0):>6g}  {json.dumps(sym.get('details', {}))}"
        )
    print(f"timings_ms     {json.dumps(dict(event.timings_ms))}")
    print(f"versions       {json.dumps(dict(event.versions))}")
    return 0


def cmd_events_purge(args: argparse.Namespace) -> int:
    store = store_of(args)
    try:
        before = parse_time(args.events_older_than) if args.events_older_than else None
        print(json.dumps(store.purge(events_before=before)))
    finally:
        store.close()
    return 0


def _label_many(store: Store, args: argparse.Namespace) -> int:
    """Many ids from stdin in one process: one a line, or `events list --json` lines.

    `mailmoat events list --symbol X --json | mailmoat label - spam`, or `< ids.txt`.
    Unknown or invalid ids are reported and skipped; the exit status says if any were.
    """
    labelled = failed = 0
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        event_id = json.loads(text)["id"] if text.startswith("{") else text.split()[0]
        try:
            store.add_label(event_id, args.label, "cli", args.by, args.note)
        except UnknownIdError as exc:
            print(f"{event_id}: {exc}", file=sys.stderr)
            failed += 1
        else:
            labelled += 1
    print(f"labelled {labelled} event(s) {args.label}" + (f"; {failed} skipped" if failed else ""))
    return 1 if failed else 0


def cmd_label(args: argparse.Namespace) -> int:
    store = store_of(args)
    try:
        if args.withdraw:
            count = store.withdraw_labels(args.id, args.by)
            print(f"withdrew {count} label(s) of {args.id}")
        elif args.history:
            for label in store.labels(args.id):
                print(json.dumps(label.to_dict()) if args.json else
                      f"{fmt_time(label.time)}  {label.label:<8} {label.source:<8} {label.author}"
                      f"{'  (withdrawn)' if label.withdrawn else ''}  {label.note}")  # fmt: skip
        else:
            if args.label is None:
                raise ValueError("give a label: spam, ham, phish or malware (or --withdraw)")
            if args.id == "-":
                return _label_many(store, args)
            entry = store.add_label(args.id, args.label, "cli", args.by, args.note)
            print(json.dumps(entry.to_dict()) if args.json else f"{args.id}: {entry.label}")
    finally:
        store.close()
    return 0
