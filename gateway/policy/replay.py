"""Replay a candidate rule set over stored mail, and rule hit statistics from the event store."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.context import Envelope, ScanContext
from gateway.events import SecurityEvent
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.types import Action, Effect, Finding, Status

SPAMMY = {"spam", "phish", "malware"}
# Outcomes that keep a message from the user: a false positive when it was ham.
WITHHELD = {Action.QUARANTINE.value, Action.REJECT.value, Action.DISCARD.value}


@dataclass
class ReplayReport:
    """What a candidate rule set would have changed."""

    messages: int = 0
    changed: int = 0
    directions: Counter[str] = field(default_factory=Counter)
    rules_in_changes: Counter[str] = field(default_factory=Counter)
    labelled: int = 0
    false_positives: tuple[int, int] = (0, 0)
    false_negatives: tuple[int, int] = (0, 0)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "changed": self.changed,
            "directions": dict(self.directions.most_common()),
            "rules_in_changes": dict(self.rules_in_changes.most_common()),
            "labelled": self.labelled,
            "false_positives": {
                "before": self.false_positives[0],
                "after": self.false_positives[1],
            },
            "false_negatives": {
                "before": self.false_negatives[0],
                "after": self.false_negatives[1],
            },
            "messages_per_second": round(self.messages / self.seconds, 1) if self.seconds else None,
            "examples": self.examples,
        }


def _stored_findings(event: SecurityEvent) -> list[Finding]:
    """The checks' findings as recorded, with their effects (the old rules' hits left out)."""
    return [
        Finding(
            s.get("check", ""),
            s["name"],
            Status(s.get("status", "fail")),
            s.get("details", {}),
            Effect.from_dict(s.get("effect") or {}),
        )
        for s in event.symbols
        if s.get("check") != "rules"
    ]


def _allowed_by_all(allows: dict[str, set[str]], rcpts: Sequence[str]) -> set[str]:
    """The senders every recipient allows."""
    sets = [allows.get(r.lower(), set()) for r in rcpts]
    return set.intersection(*sets) if sets else set()


def _errs(label: str | None, action: str) -> tuple[bool, bool]:
    """(false positive, false negative) of an action given an analyst label."""
    if label is None:
        return False, False
    spammy = label in SPAMMY
    return (not spammy and action in WITHHELD), (spammy and action == Action.ACCEPT.value)


async def replay(
    store: Store,
    pipeline: Pipeline,
    since: float | None,
    until: float | None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Evaluate ``pipeline``'s rules and policy over retained messages, against what happened.

    The checks' recorded findings are used (no clamd, no DNS), so a replay measures the rules
    on the evidence the gateway had. What rules see beyond findings is rebuilt as the gateway
    had it: the content check inspects the attachments again (local work: true types and
    archive members, for rules that test them; its findings stay the recorded ones), and the
    senders the recipients allow now are those the rules see.
    """
    rows = list(store.retained_messages(since, until))
    content = next((c for c in pipeline.checks if c.name == "content"), None)
    allows = store.sender_allows()
    report = ReplayReport()
    started = time.perf_counter()
    fp_before = fp_after = fn_before = fn_after = 0

    for number, (event, raw) in enumerate(rows, start=1):
        ctx = ScanContext(
            Envelope(
                id=event.id, raw=raw, mail_from=event.mail_from, rcpts=event.rcpts,
                client_ip=event.client_ip, helo=event.helo, tls=event.tls,
                mail_options=("BODY=8BITMIME",),
            )
        )  # fmt: skip
        if content is not None:
            await content.run(ctx)  # fills ctx.inspected_files
        ctx.allowed_senders.update(_allowed_by_all(allows, event.rcpts))
        findings = _stored_findings(event)
        hits = pipeline.rules.evaluate(ctx, findings) if pipeline.rules else []
        verdict = pipeline.policy.decide([*findings, *(h.finding() for h in hits)], event.rcpts)
        report.messages += 1
        before, after = event.action, verdict.action.value
        label = store.current_label(event.id)
        label_name = label.label if label else None
        if label is not None:
            report.labelled += 1
            fp0, fn0 = _errs(label_name, before)
            fp1, fn1 = _errs(label_name, after)
            fp_before, fn_before = fp_before + fp0, fn_before + fn0
            fp_after, fn_after = fp_after + fp1, fn_after + fn1
        if before != after:
            report.changed += 1
            report.directions[f"{before} -> {after}"] += 1
            old_rules = {s["name"] for s in event.symbols if s.get("check") == "rules"}
            new_rules = {h.rule.rule.name for h in hits}
            for name in old_rules ^ new_rules:
                report.rules_in_changes[name] += 1
            if len(report.examples) < 20:
                report.examples.append({
                    "id": event.id, "subject": event.subject[:80], "before": before,
                    "after": after, "reason": verdict.reason, "label": label_name,
                })  # fmt: skip
        if progress is not None:
            progress(number, len(rows))
    report.false_positives = (fp_before, fp_after)
    report.false_negatives = (fn_before, fn_after)
    report.seconds = time.perf_counter() - started
    return report


def rule_stats(store: Store, rule_names: list[str], since: float | None) -> dict[str, Any]:
    """Hits per rule and symbol, hits per day for rules, silent rules, rules firing on ham."""
    since = since or 0.0
    symbols = dict(store.symbol_counts(since))
    per_day = {s: days for s, days in store.symbol_hits_per_day(since).items() if s in rule_names}
    on_ham = {s: n for s, n in store.symbol_hits_on_ham(since).items() if s in rule_names}
    return {
        "rules": {name: symbols.get(name, 0) for name in rule_names},
        "symbols": symbols,
        "per_day": per_day,
        "never_fired": [name for name in rule_names if not symbols.get(name)],
        "fired_on_ham": on_ham,
    }
