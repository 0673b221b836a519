"""The ``mailmoat`` command: serve, scan, config check, events, label, quarantine, model."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.context import Envelope, ScanContext, new_connection_id
from gateway.errors import ConfigError, GatewayError, UnknownIdError
from gateway.events import EventFilter, EventKind, SecurityEvent, SqliteStore, parse_time
from gateway.pipeline import Pipeline, policy_problems
from gateway.quarantine import Quarantine
from gateway.services import Services
from gateway.smtp.limits import ConnectionCounts

log = logging.getLogger(__name__)


def _setup_logging(level: str, events_to_stderr: bool) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not events_to_stderr:
        logging.getLogger("gateway.events").setLevel(logging.WARNING)
    # aiosmtpd logs every command line at INFO under "mail.log"; our events say what matters.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- serve ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config_path = Path(args.config) if args.config else None
    workers = settings.server.worker_count
    if workers == 1:
        _serve_one(settings, config_path, 0)
        return 0
    from gateway.milter.server import milter_socket
    from gateway.smtp.server import listening_socket
    from gateway.smtp.workers import run_workers

    sock = milter_sock = None
    if settings.server.listen:
        try:
            sock = listening_socket(settings.server)
        except OSError as exc:
            raise ConfigError(
                f"server.listen: cannot listen on {settings.server.listen}: {exc}"
            ) from exc
    if settings.milter.listen:
        milter_sock = milter_socket(settings.milter)
    # The last good pipeline, kept here: a worker that dies is forked again from it, so a
    # model or rule file broken on disk since the start cannot keep it from coming back.
    services = Services()
    current_settings, current_pipeline = settings, Pipeline.from_settings(settings, services)

    def reload() -> None:
        nonlocal current_settings, current_pipeline
        try:
            new_settings = load_settings(config_path) if config_path else settings
            current_pipeline = Pipeline.from_settings(new_settings, services)
            current_settings = new_settings
        except (ConfigError, OSError, UnicodeError) as exc:
            log.error("reload refused in the parent, new workers keep the last good: %s", exc)

    counts = ConnectionCounts(workers)

    def work(worker: int) -> None:
        counts.worker = worker
        _serve_one(
            current_settings, config_path, worker, sock, current_pipeline, counts, milter_sock,
            services,
        )  # fmt: skip

    listeners = [s for s in (sock, milter_sock) if s is not None]
    return run_workers(workers, work, settings, listeners, reload, counts.clear)


def _serve_one(
    settings: Settings,
    config_path: Path | None,
    worker: int,
    sock: socket.socket | None = None,
    pipeline: Pipeline | None = None,
    counts: ConnectionCounts | None = None,
    milter_sock: socket.socket | None = None,
    services: Services | None = None,
) -> None:
    from gateway.serve import serve
    from gateway.service import Gateway

    gateway = Gateway(settings, config_path, pipeline, services)
    # What is loaded now (the model: millions of objects) lives as long as the process: out
    # of the collector's sight, a full collection takes 8 ms instead of 90 ms, during which
    # every session of this worker waits.
    gc.collect()
    gc.freeze()
    try:
        import uvloop  # a faster event loop where installed (docs/performance.md)

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(gateway, worker=worker, sock=sock, counts=counts, milter_sock=milter_sock))


# --- scan -----------------------------------------------------------------------------


def iter_message_files(paths: Sequence[str]) -> Iterator[Path]:
    """Files as given, and every file under given directories (sorted, recursive)."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for file in sorted(files):
                    yield Path(root) / file
        else:
            yield path


def read_message(path: Path) -> bytes:
    """Read a message file, dropping a leading mbox 'From ' line if present."""
    data = path.read_bytes()
    if data.startswith(b"From "):
        _, _, data = data.partition(b"\n")
    return data


async def _scan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = Pipeline.from_settings(settings)
    conn = new_connection_id()
    status = 0
    try:
        for number, path in enumerate(iter_message_files(args.paths), start=1):
            try:
                raw = read_message(path)
            except OSError as exc:
                print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
                status = 1
                continue
            env = Envelope(
                id=f"{conn}.{number}",
                raw=raw,
                mail_from=args.mail_from,
                rcpts=tuple(args.rcpt or ["postmaster@localhost"]),
                client_ip=args.client_ip,
                helo=args.helo,
                mail_options=("BODY=8BITMIME",),
            )
            result = await pipeline.scan(ScanContext(env))
            verdict = result.verdict
            if args.json:
                record = {
                    "file": str(path),
                    "action": verdict.action.value,
                    "score": verdict.score,
                    "reason": verdict.reason,
                    "symbols": [s.as_dict() for s in verdict.symbols],
                    "timings_ms": result.timings_ms,
                }
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(f"{path}: {verdict.action.value} score={verdict.score:g} ({verdict.reason})")
                for s in verdict.symbols:
                    detail = json.dumps(dict(s.details), ensure_ascii=False) if s.details else ""
                    print(f"  {s.name:<28} {s.score:>6g}  {detail}")
                timings = "  ".join(f"{k}={v:g}ms" for k, v in result.timings_ms.items())
                print(f"  timings: {timings}")
    finally:
        await pipeline.aclose()
    return status


def cmd_scan(args: argparse.Namespace) -> int:
    return asyncio.run(_scan(args))


# --- config ---------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = Pipeline.from_settings(settings)
    problems = policy_problems(settings, pipeline.rules)
    origin = args.config or "embedded defaults"
    print(f"{origin}: {'OK' if not problems else f'{len(problems)} error(s)'}")
    print(f"  listen   {settings.server.listen or '(no SMTP front)'}")
    print(f"  milter   {settings.milter.listen or '(off)'}")
    backend = settings.backend
    where = f"{backend.host}:{backend.port}" if backend.kind == "smtp" else str(backend.path)
    print(f"  backend  {backend.kind} {where}")
    print(f"  store    {settings.store.database}")
    print(f"  checks   {', '.join(c.name for c in pipeline.checks) or '(none)'}")
    if pipeline.rules is not None:
        print(f"  rules    {len(pipeline.rules.rules)} (version {pipeline.rules.version})")
    for check in pipeline.checks:
        model = getattr(check, "model", None)
        if model is not None:
            print(f"  model    {model.id} (threshold {model.threshold:.4f})")
    policy = settings.policy
    thresholds = f"tag>={policy.tag:g} quarantine>={policy.quarantine:g} reject>={policy.reject:g}"
    print(f"  policy   {thresholds}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


# --- events ---------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> SqliteStore:
    return SqliteStore(_settings(args).store.database)


def _event_line(event: SecurityEvent) -> str:
    score = "" if event.score is None else f"{event.score:g}"
    rcpts = ",".join(event.rcpts)
    return (
        f"{event.id}  {_fmt_time(event.time)}  {event.kind:<18} {event.action:<10} {score:>6}  "
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
    store = _store(args)
    try:
        for event in store.list(where):
            print(
                json.dumps(event.to_dict(), ensure_ascii=False) if args.json else _event_line(event)
            )
    finally:
        store.close()
    return 0


def cmd_events_show(args: argparse.Namespace) -> int:
    store = _store(args)
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
    print(f"{'time':<14} {_fmt_time(event.time)}")
    print("symbols:")
    for sym in event.symbols:
        print(
            f"  {sym['name']:<28} {sym.get('score', 0):>6g}  {json.dumps(sym.get('details', {}))}"
        )
    print(f"timings_ms     {json.dumps(dict(event.timings_ms))}")
    print(f"versions       {json.dumps(dict(event.versions))}")
    return 0


def cmd_events_purge(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        before = parse_time(args.events_older_than) if args.events_older_than else None
        print(json.dumps(store.purge(events_before=before)))
    finally:
        store.close()
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.withdraw:
            count = store.withdraw_labels(args.id, args.by)
            print(f"withdrew {count} label(s) of {args.id}")
        elif args.history:
            for label in store.labels(args.id):
                print(json.dumps(label.to_dict()) if args.json else
                      f"{_fmt_time(label.time)}  {label.label:<8} {label.source:<8} {label.author}"
                      f"{'  (withdrawn)' if label.withdrawn else ''}  {label.note}")  # fmt: skip
        else:
            if args.label is None:
                raise ValueError("give a label: spam, ham, phish or malware (or --withdraw)")
            entry = store.add_label(args.id, args.label, "cli", args.by, args.note)
            print(json.dumps(entry.to_dict()) if args.json else f"{args.id}: {entry.label}")
    finally:
        store.close()
    return 0


# --- rules ----------------------------------------------------------------------------


def _rules_settings(args: argparse.Namespace, paths: Sequence[str] | None) -> Settings:
    settings = _settings(args)
    if paths:
        rules = settings.rules.model_copy(
            update={"paths": [Path(p) for p in paths], "enabled": True}
        )
        settings = settings.model_copy(update={"rules": rules})
    return settings


def cmd_rules(args: argparse.Namespace) -> int:
    from gateway.pipeline import known_symbols
    from gateway.policy.rules import RuleSetError, load_rules
    from gateway.policy.rules_schema import json_schema

    command = args.rcommand
    if command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if command == "lint":
        settings = _settings(args)
        paths = [Path(p) for p in args.paths] or list(settings.rules.paths)
        try:
            rules = load_rules(paths, known_symbols([]))
        except RuleSetError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            errors = sum(p.severity == "error" for p in exc.problems)
            print(f"{errors} error(s); the rule set is not usable", file=sys.stderr)
            return 1
        for warning in rules.warnings:
            print(warning)
        print(f"{len(rules.rules)} rules OK (version {rules.version})")
        return 0
    if command == "reload":
        return _rules_reload(args)
    if command == "test":
        return asyncio.run(_rules_test(args))
    if command == "replay":
        return asyncio.run(_rules_replay(args))
    if command == "stats":
        return _rules_stats(args)
    raise ValueError(f"unknown rules command {command}")


def _rules_reload(args: argparse.Namespace) -> int:
    import signal

    from gateway.pipeline import known_symbols
    from gateway.policy.rules import load_rules

    settings = _settings(args)
    load_rules(settings.rules.paths, known_symbols([]))  # refuse before bothering the service
    pid_file = settings.server.pid_file
    try:
        pid = int(pid_file.read_text().strip()) if pid_file else 0
    except (OSError, ValueError):
        pid = 0
    if pid <= 0:
        print(f"mailmoat: no running gateway (pid file {pid_file})", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"rules valid; asked the gateway (pid {pid}) to reload")
    return 0


async def _rules_test(args: argparse.Namespace) -> int:
    settings = _rules_settings(args, [args.rules])
    pipeline = Pipeline.from_settings(settings)
    conn = new_connection_id()
    try:
        for number, path in enumerate(iter_message_files(args.messages), start=1):
            env = Envelope(
                id=f"{conn}.{number}", raw=read_message(path), mail_from=args.mail_from,
                rcpts=tuple(args.rcpt or ["postmaster@localhost"]), client_ip=args.client_ip,
                helo=args.helo, mail_options=("BODY=8BITMIME",),
            )  # fmt: skip
            result = await pipeline.scan(ScanContext(env), explain=True)
            verdict = result.verdict
            if args.json:
                print(json.dumps({
                    "file": str(path), "action": verdict.action.value, "score": verdict.score,
                    "reason": verdict.reason,
                    "rules": [{"name": h.rule.rule.name, "mode": h.rule.rule.mode,
                               "file": h.rule.file, "line": h.rule.line, "matched": h.reasons}
                              for h in result.rule_hits],
                    "symbols": [s.as_dict() for s in verdict.symbols],
                }, ensure_ascii=False))  # fmt: skip
                continue
            print(f"{path}: {verdict.action.value} score={verdict.score:g} ({verdict.reason})")
            for hit in result.rule_hits:
                rule = hit.rule.rule
                effect = " ".join(
                    x for x in (f"score {rule.score:g}" if rule.score is not None else "",
                                f"action {rule.action.value}" if rule.action else "") if x
                )  # fmt: skip
                print(
                    f"  rule {rule.name} [{rule.mode}] {effect}  ({hit.rule.file}:{hit.rule.line})"
                )
                for reason in hit.reasons:
                    print(f"    because {reason}")
            others = [s for s in verdict.symbols if s.check != "rules"]
            print("  symbols: " + ", ".join(f"{s.name}({s.score:g})" for s in others))
    finally:
        await pipeline.aclose()
    return 0


async def _rules_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gateway.policy.replay import replay

    settings = _rules_settings(args, [args.rules])
    # Only the rules and the policy run in a replay: the checks' findings are the stored ones.
    settings = settings.model_copy(
        update={"checks": {n: {"enabled": False} for n in _check_names()}}
    )
    pipeline = Pipeline.from_settings(settings)
    store = SqliteStore(Path(args.events) if args.events else settings.store.database)
    bar = tqdm(desc="replay", unit="msg", disable=None if not args.json else True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    try:
        report = await replay(
            store, pipeline,
            parse_time(args.since) if args.since else None,
            parse_time(args.until) if args.until else None,
            progress,
        )  # fmt: skip
    finally:
        bar.close()
        store.close()
        await pipeline.aclose()
    data = report.to_dict()
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return 0
    print(f"replayed {data['messages']} stored messages ({data['messages_per_second']} msg/s)")
    print(f"verdicts that change: {data['changed']}")
    for direction, count in data["directions"].items():
        print(f"  {direction:<24} {count}")
    if data["rules_in_changes"]:
        print("rules behind the changes:")
        for name, count in data["rules_in_changes"].items():
            print(f"  {name:<32} {count}")
    fp, fn = data["false_positives"], data["false_negatives"]
    print(f"with analyst labels ({data['labelled']} messages):")
    print(f"  false positives {fp['before']} -> {fp['after']}")
    print(f"  false negatives {fn['before']} -> {fn['after']}")
    for example in data["examples"][:10]:
        print(f"  {example['id']} {example['before']} -> {example['after']}  {example['subject']}")
    return 0


def _check_names() -> list[str]:
    from gateway.checks import REGISTRY

    return [cls.name for cls in REGISTRY]


def _rules_stats(args: argparse.Namespace) -> int:
    from gateway.pipeline import known_symbols
    from gateway.policy.replay import rule_stats
    from gateway.policy.rules import load_rules

    settings = _settings(args)
    rules = load_rules(settings.rules.paths, known_symbols([]))
    store = SqliteStore(settings.store.database)
    try:
        stats = rule_stats(store, rules.names, parse_time(args.since) if args.since else None)
    finally:
        store.close()
    if args.json:
        print(json.dumps(stats))
        return 0
    print("hits per rule:")
    for name, hits in sorted(stats["rules"].items(), key=lambda kv: -kv[1]):
        days = stats["per_day"].get(name, {})
        trend = " ".join(f"{d[5:]}:{n}" for d, n in list(days.items())[-7:])
        ham = stats["fired_on_ham"].get(name, 0)
        print(f"  {name:<36} {hits:>6}  on ham {ham:>3}  {trend}")
    print("never fired: " + (", ".join(stats["never_fired"]) or "none"))
    print("top symbols: " + ", ".join(f"{k}={v}" for k, v in list(stats["symbols"].items())[:15]))
    return 0


# --- console and users -----------------------------------------------------------------


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.config import parse_hostport
    from gateway.web.app import create_app

    settings = _settings(args)
    host, port = parse_hostport(args.listen or settings.web.listen)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", server_header=False)
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    import getpass

    from gateway.web.security import hash_password

    store = _store(args)
    try:
        if args.ucommand == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise ValueError("the passwords differ")
            if not args.name.isidentifier():
                raise ValueError("user names are letters, digits and _")
            store.add_user(args.name, hash_password(password), args.role)
            print(f"saved {args.name} ({args.role})")
        elif args.ucommand == "list":
            for user in store.users():
                state = " (disabled)" if user["disabled"] else ""
                print(f"{user['name']:<20} {user['role']:<8}{state}")
        elif args.ucommand == "role":
            store.set_user(args.name, role=args.role)
        elif args.ucommand in ("disable", "enable"):
            store.set_user(args.name, disabled=args.ucommand == "disable")
    finally:
        store.close()
    return 0


# --- quarantine -----------------------------------------------------------------------


def cmd_quarantine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.qcommand == "release":
        return asyncio.run(_release(settings, args.id))
    store = SqliteStore(settings.store.database)
    quarantine = Quarantine(settings.store.quarantine_dir, store)
    try:
        if args.qcommand == "list":
            for entry in quarantine.list(status=None if args.all else "held", limit=args.limit):
                if args.json:
                    print(json.dumps(entry.to_dict(), ensure_ascii=False))
                else:
                    score = "" if entry.score is None else f"{entry.score:g}"
                    route = f"{entry.mail_from or '<>'} -> {','.join(entry.rcpts)}"
                    print(
                        f"{entry.id}  {_fmt_time(entry.time)}  {entry.status:<8} {score:>6}  "
                        f"{route}  {entry.subject[:60]}"
                    )
        elif args.qcommand == "show":
            entry = quarantine.get(args.id)
            if args.raw:
                sys.stdout.buffer.write(quarantine.read(args.id))
            else:
                print(json.dumps(entry.to_dict(), ensure_ascii=False, indent=2))
        elif args.qcommand == "delete":
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


# --- parser ---------------------------------------------------------------------------


TRAINING_COMMANDS = ("model", "learn")


def build_parser(with_training: bool = False) -> argparse.ArgumentParser:
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
        description=__doc__,
        epilog="Analysts' commands: mailmoat model {dataset,train,evaluate,promote,rollback,"
        "list,show} and mailmoat learn (see `mailmoat model --help`).",
    )
    parser.add_argument("--version", action="version", version=f"mailmoat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the SMTP gateway")
    serve.set_defaults(func=cmd_serve)

    scan = sub.add_parser("scan", parents=[common], help="run the pipeline on message files")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="message files or directories")
    scan.add_argument("--json", action="store_true", help="one JSON object per message per line")
    scan.add_argument("--client-ip", default="127.0.0.1")
    scan.add_argument("--helo", default="localhost")
    scan.add_argument("--mail-from", default="")
    scan.add_argument("--rcpt", action="append", metavar="ADDR")
    scan.set_defaults(func=cmd_scan)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="ccommand", required=True)
    check = config_sub.add_parser("check", parents=[common], help="validate a config file")
    check.set_defaults(func=cmd_config_check)

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

    rules = sub.add_parser("rules", help="staff rules: lint, test, replay, stats, schema, reload")
    r_sub = rules.add_subparsers(dest="rcommand", required=True)
    lint = r_sub.add_parser("lint", parents=[common], help="check rule files (file:line errors)")
    lint.add_argument("paths", nargs="*", metavar="PATH", help="default: [rules] paths")
    rtest = r_sub.add_parser("test", parents=[common], help="explain verdicts on message files")
    rtest.add_argument("rules", metavar="RULES", help="a rule file or directory")
    rtest.add_argument("messages", nargs="+", metavar="MESSAGE")
    rtest.add_argument("--json", action="store_true")
    rtest.add_argument("--client-ip", default="127.0.0.1")
    rtest.add_argument("--helo", default="localhost")
    rtest.add_argument("--mail-from", default="")
    rtest.add_argument("--rcpt", action="append", metavar="ADDR")
    rreplay = r_sub.add_parser("replay", parents=[common], help="what a rule set would change")
    rreplay.add_argument("rules", metavar="RULES")
    rreplay.add_argument("--since")
    rreplay.add_argument("--until")
    rreplay.add_argument("--events", metavar="DB", help="an event store file (default: [store])")
    rreplay.add_argument("--json", action="store_true")
    rstats = r_sub.add_parser("stats", parents=[common], help="hits per rule and symbol")
    rstats.add_argument("--since")
    rstats.add_argument("--json", action="store_true")
    r_sub.add_parser("schema", parents=[common], help="print the JSON Schema of rule files")
    r_sub.add_parser("reload", parents=[common], help="lint, then make the gateway reload")
    for rcmd in r_sub.choices.values():
        rcmd.set_defaults(func=cmd_rules)

    web = sub.add_parser("web", parents=[common], help="run the review console")
    web.add_argument("--listen", help="HOST:PORT (default: [web] listen, 127.0.0.1:8025)")
    web.set_defaults(func=cmd_web)
    users = sub.add_parser("users", help="console users")
    u_sub = users.add_subparsers(dest="ucommand", required=True)
    uadd = u_sub.add_parser("add", parents=[common], help="create a user or set a password")
    uadd.add_argument("name")
    uadd.add_argument("--role", choices=["viewer", "analyst", "admin"], default="viewer")
    uadd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u_sub.add_parser("list", parents=[common])
    urole = u_sub.add_parser("role", parents=[common])
    urole.add_argument("name")
    urole.add_argument("role", choices=["viewer", "analyst", "admin"])
    for name in ("disable", "enable"):
        u_sub.add_parser(name, parents=[common]).add_argument("name")
    for ucmd in u_sub.choices.values():
        ucmd.set_defaults(func=cmd_users)

    label = sub.add_parser("label", parents=[common], help="label an event for retraining")
    label.add_argument("id")
    label.add_argument("label", nargs="?", choices=["spam", "ham", "phish", "malware"])
    label.add_argument("--note", default="")
    label.add_argument("--by", default=os.environ.get("USER", "cli"), help="who labels")
    label.add_argument("--withdraw", action="store_true", help="withdraw the event's labels")
    label.add_argument("--history", action="store_true", help="show the label history")
    label.add_argument("--json", action="store_true")
    label.set_defaults(func=cmd_label)

    quarantine = sub.add_parser("quarantine", help="held messages")
    q_sub = quarantine.add_subparsers(dest="qcommand", required=True)
    qlist = q_sub.add_parser("list", parents=[common])
    qlist.add_argument("--all", action="store_true", help="include released and deleted")
    qlist.add_argument("--limit", type=int, default=100)
    qlist.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "metadata (or --raw bytes)"),
        ("release", "deliver to the backend"),
        ("delete", "discard for good"),
    ):
        qcmd = q_sub.add_parser(name, parents=[common], help=text)
        qcmd.add_argument("id")
        if name == "show":
            qcmd.add_argument("--raw", action="store_true", help="print the message bytes")
    for qcmd in q_sub.choices.values():
        qcmd.set_defaults(func=cmd_quarantine)
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
    _setup_logging(
        log_level(args.command, args.log_level), events_to_stderr=args.command == "serve"
    )
    started = time.perf_counter()
    try:
        if args.command in TRAINING_COMMANDS:
            status: int = args.func(args, _settings(args))
        else:
            status = args.func(args)
    except UnknownIdError as exc:
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"mailmoat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    log.debug("done in %.1f ms", (time.perf_counter() - started) * 1000)
    return status
