"""``mailmoat scan`` (the pipeline on files) and ``mailmoat config check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gateway.cli.common import Subparsers, iter_message_files, read_message, settings_of
from gateway.context import Envelope, ScanContext, new_connection_id
from gateway.pipeline import Pipeline


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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


async def _scan(args: argparse.Namespace) -> int:
    settings = settings_of(args)
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


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.smtp.recipients import read_map

    settings = settings_of(args)
    pipeline = Pipeline.from_settings(settings)
    problems = pipeline.problems
    mapped = settings.server.recipient_map
    recipients = read_map(mapped) if mapped is not None else None  # a ConfigError names the line
    origin = args.config or "embedded defaults"
    print(f"{origin}: {'OK' if not problems else f'{len(problems)} error(s)'}")
    print(f"  listen   {settings.server.listen or '(no SMTP front)'}")
    print(f"  milter   {settings.milter.listen or '(off)'}")
    print(f"  console  http://{settings.web.listen}")
    backend = settings.backend
    print(f"  backend  {backend.describe()}")
    if recipients is not None:
        print(f"  accepts  {len(recipients.addresses)} addresses, {len(recipients.domains)} "
              f"whole domains ({mapped})")  # fmt: skip
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
