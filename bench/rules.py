"""Rule evaluation time per message (starter set, 1000 generated rules) and replay speed.

Run:  .venv/bin/python -m bench.rules [--messages N]

Messages are the SpamAssassin corpus's. Rules are evaluated on each message after the local
checks (protocol, headers, content) have produced their findings, as in the gateway; the
1000 generated rules mix subject/body regexes, header tests, sender lists and symbol tests.
Replay speed is measured over a store the benchmark fills with retained messages.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.common import load_corpus, percentile, table
from gateway.config import PROJECT_ROOT, Settings
from gateway.context import Envelope, ScanContext
from gateway.events import Retained, SecurityEvent
from gateway.pipeline import Pipeline, known_symbols
from gateway.policy.replay import replay
from gateway.policy.rules import load_rules
from gateway.store import SqliteStore
from gateway.types import Finding

WORDS = [
    "free",
    "money",
    "offer",
    "invoice",
    "urgent",
    "winner",
    "viagra",
    "loan",
    "click",
    "account",
    "verify",
    "password",
    "bank",
    "lottery",
    "credit",
    "cheap",
    "deal",
    "prize",
]
SYMBOLS = ["HDR_MISSING_DATE", "HDR_DUPLICATE", "PROTO_BARE_LF", "MIME_MALFORMED",
           "ATTACHMENT_EXECUTABLE", "HDR_MISSING_MESSAGE_ID"]  # fmt: skip


def generated_rules(directory: Path, count: int) -> None:
    rng = random.Random(7)
    lines = ["rules:"]
    for n in range(count):
        kind = n % 5
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        if kind == 0:
            cond = f"{{subject: {{regex: '\\b{a}\\s+{b}\\b'}}}}"
        elif kind == 1:
            cond = f"{{body: {{regex: '\\b{a}\\b.{{0,40}}\\b{b}\\b'}}}}"
        elif kind == 2:
            cond = f"{{header: {{name: X-Mailer, match: {{contains: '{a}'}}}}}}"
        elif kind == 3:
            symbol = rng.choice(SYMBOLS)
            cond = f"{{all: [{{symbol: {symbol}}}, {{sender_domain: {{ends_with: '.{a}'}}}}]}}"
        else:
            domains = f"{{from_domain: {{in: [{a}.example, {b}.test]}}}}"
            cond = f"{{any: [{domains}, {{url_domain: {{contains: {a}}}}}]}}"
        head = f"name: GEN_{n:04d}, description: generated, owner: bench, mode: active"
        lines.append(f"  - {{{head}, when: {cond}, score: 0.5}}")
    (directory / "generated.yaml").write_text("\n".join(lines) + "\n")


async def main(count: int) -> None:
    corpus = [raw for _, raw in load_corpus(count)]
    off = {"enabled": False}
    checks = {"antivirus": off, "auth": off, "classifier": off}
    settings = Settings(checks=checks, rules=off)
    pipeline = Pipeline.from_settings(settings)
    prepared = []
    for number, raw in enumerate(corpus):
        env = Envelope(
            id=f"{number:016x}.1", raw=raw, mail_from="a@sender.test", rcpts=("b@example.test",)
        )
        ctx = ScanContext(env)
        result = await pipeline.scan(ctx)
        findings = [Finding(s.check, s.name, s.status, s.details) for s in result.verdict.symbols]
        prepared.append((ctx, findings, result))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / "generated"
        generated.mkdir()
        generated_rules(generated, 1000)
        sets = {
            "starter rules (rules/)": [PROJECT_ROOT / "rules"],
            "1000 generated rules": [generated],
        }
        for name, paths in sets.items():
            started = time.perf_counter()
            ruleset = load_rules(paths, known_symbols([]))
            load_ms = (time.perf_counter() - started) * 1000
            latencies = []
            for ctx, findings, _ in prepared:
                fresh = ScanContext(ctx.envelope)  # no cached views: the rules pay for them
                t0 = time.perf_counter()
                ruleset.evaluate(fresh, findings)
                latencies.append((time.perf_counter() - t0) * 1000)
            rows.append([name, len(ruleset.rules), f"{load_ms:.0f}", percentile(latencies, 50),
                         percentile(latencies, 95), percentile(latencies, 99)])  # fmt: skip
        store = SqliteStore(Path(tmp) / "events.sqlite3")
        for ctx, _, result in prepared:
            event = SecurityEvent(
                id=ctx.envelope.id,
                kind="message",
                mail_from="a@sender.test",
                rcpts=("b@example.test",),
                action=result.verdict.action.value,
                symbols=tuple(s.as_dict() for s in result.verdict.symbols),
            )
            store.add(event, Retained(ctx.envelope.raw, None, None))
        rules = settings.rules.model_copy(update={"enabled": True, "paths": [generated]})
        candidate = Pipeline.from_settings(settings.model_copy(update={"rules": rules}))
        report = await replay(store, candidate, None, None)
        store.close()
    print(f"{len(prepared)} corpus messages")
    print(table(["rule set", "rules", "load ms", "p50 ms/msg", "p95 ms/msg", "p99 ms/msg"], rows))
    rate = report.messages / report.seconds
    print(f"replay of 1000 generated rules over {report.messages} stored messages: "
          f"{rate:,.0f} messages/s ({report.changed} verdicts change)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    asyncio.run(main(parser.parse_args().messages))
