"""``mailmoat rules``: lint, test, replay, stats, schema, reload."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    Subparsers,
    ask_to_reload,
    iter_message_files,
    read_message,
    settings_of,
)
from gateway.config import Settings
from gateway.context import Envelope, ScanContext, new_connection_id
from gateway.events import parse_time
from gateway.pipeline import Pipeline
from gateway.store import SqliteStore, open_store


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    rules = sub.add_parser("rules", help="staff rules: lint, test, replay, stats, schema, reload")
    r_sub = rules.add_subparsers(dest="rcommand", required=True)
    lint = r_sub.add_parser("lint", parents=[common], help="check rule files (file:line errors)")
    lint.add_argument("paths", nargs="*", metavar="PATH", help="default: [rules] paths")
    lint.set_defaults(func=cmd_rules_lint)
    rtest = r_sub.add_parser("test", parents=[common], help="explain verdicts on message files")
    rtest.add_argument("rules", metavar="RULES", help="a rule file or directory")
    rtest.add_argument("messages", nargs="+", metavar="MESSAGE")
    rtest.add_argument("--json", action="store_true")
    rtest.add_argument("--client-ip", default="127.0.0.1")
    rtest.add_argument("--helo", default="localhost")
    rtest.add_argument("--mail-from", default="")
    rtest.add_argument("--rcpt", action="append", metavar="ADDR")
    rtest.set_defaults(func=lambda args: asyncio.run(_rules_test(args)))
    rreplay = r_sub.add_parser("replay", parents=[common], help="what a rule set would change")
    rreplay.add_argument("rules", metavar="RULES")
    rreplay.add_argument("--since")
    rreplay.add_argument("--until")
    rreplay.add_argument("--events", metavar="DB", help="an event store file (default: [store])")
    rreplay.add_argument("--json", action="store_true")
    rreplay.set_defaults(func=lambda args: asyncio.run(_rules_replay(args)))
    rstats = r_sub.add_parser("stats", parents=[common], help="hits per rule and symbol")
    rstats.add_argument("--since")
    rstats.add_argument("--json", action="store_true")
    rstats.set_defaults(func=_rules_stats)
    schema = r_sub.add_parser(
        "schema", parents=[common], help="print the JSON Schema of rule files"
    )
    schema.set_defaults(func=cmd_rules_schema)
    reload = r_sub.add_parser("reload", parents=[common], help="lint, then make the gateway reload")
    reload.set_defaults(func=_rules_reload)


def _rules_settings(args: argparse.Namespace, paths: Sequence[str] | None) -> Settings:
    settings = settings_of(args)
    if paths:
        rules = settings.rules.model_copy(
            update={"paths": [Path(p) for p in paths], "enabled": True}
        )
        settings = settings.model_copy(update={"rules": rules})
    return settings


def cmd_rules_schema(args: argparse.Namespace) -> int:
    from gateway.policy.rules_schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_rules_lint(args: argparse.Namespace) -> int:
    from gateway.pipeline import known_symbols
    from gateway.policy.rules import RuleSetError, load_rules

    settings = settings_of(args)
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


def _rules_reload(args: argparse.Namespace) -> int:
    from gateway.pipeline import known_symbols
    from gateway.policy.rules import load_rules

    settings = settings_of(args)
    load_rules(settings.rules.paths, known_symbols([]))  # refuse before bothering the service
    return ask_to_reload(settings, "rules valid")


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
    # Only the rules and the policy decide in a replay: the checks' findings are the stored
    # ones. The content check stays as configured: it inspects attachments again (true
    # types, archive members) for the rules that test them (gateway/policy/replay.py).
    checks: dict[str, Any] = {n: {"enabled": False} for n in _check_names()}
    checks["content"] = dict(settings.check_section("content"))
    settings = settings.model_copy(update={"checks": checks})
    pipeline = Pipeline.from_settings(settings)
    store = SqliteStore(Path(args.events)) if args.events else open_store(settings.store)
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

    settings = settings_of(args)
    rules = load_rules(settings.rules.paths, known_symbols([]))
    store = open_store(settings.store)
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
