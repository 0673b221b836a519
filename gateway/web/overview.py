"""The overview page's numbers, straight from the event store (indexed by time)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from html import escape
from typing import Any

from gateway.config import Settings
from gateway.store import Store

ACTIONS = ("accept", "tag", "quarantine", "reject", "tempfail", "discard")
COLOURS = {"accept": "#4c9a2a", "tag": "#d4a017", "quarantine": "#e07b00", "reject": "#c0392b",
           "tempfail": "#7f8c8d", "discard": "#34495e"}  # fmt: skip


def chart(buckets: list[tuple[str, dict[str, int]]]) -> str:
    """A stacked bar chart of actions per bucket, as inline SVG (no JavaScript)."""
    width, height, pad = 720, 180, 20
    peak = max((sum(c.values()) for _, c in buckets), default=0) or 1
    bar = (width - 2 * pad) / max(1, len(buckets))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
             f'role="img" aria-label="verdicts over time">']  # fmt: skip
    for index, (label, counts) in enumerate(buckets):
        y = float(height)
        for action in ACTIONS:
            n = counts.get(action, 0)
            if not n:
                continue
            h = (height - pad) * n / peak
            y -= h
            parts.append(f'<rect x="{pad + index * bar:.1f}" y="{y:.1f}" width="{bar * 0.8:.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS[action]}"><title>{escape(label)} '
                         f'{action}: {n}</title></rect>')  # fmt: skip
        if index % max(1, len(buckets) // 8) == 0:
            parts.append(f'<text x="{pad + index * bar:.1f}" y="{height + 15}" font-size="10">'
                         f"{escape(label)}</text>")  # fmt: skip
    legend_x = pad
    for action in ACTIONS:
        parts.append(f'<rect x="{legend_x}" y="{height + 25}" width="10" height="10" '
                     f'fill="{COLOURS[action]}"/><text x="{legend_x + 14}" y="{height + 34}" '
                     f'font-size="10">{action}</text>')  # fmt: skip
        legend_x += 90
    parts.append(
        f'<text x="{width - pad}" y="12" font-size="10" text-anchor="end">max {peak}</text>'
    )
    return "".join(parts) + "</svg>"


def summary(
    store: Store, settings: Settings, now: float | None = None, days: float = 7.0
) -> dict[str, Any]:
    """Verdicts over 24 h, top symbols/senders/domains/rules and labels vs verdicts over
    ``days`` (7 for the console, 1 for the daily report), failures over 24 h."""
    now = now or time.time()
    day, week = now - 86400, now - days * 86400
    per_hour = store.verdicts_by_hour(day)
    # All 24 hours, empty ones included, so the time axis is honest.
    buckets = [
        (datetime.fromtimestamp(day + n * 3600, UTC).strftime("%H:00"), per_hour.get(n, {}))
        for n in range(24)
    ]
    totals = {a: 0 for a in ACTIONS}
    for _, counts in buckets:
        for action, n in counts.items():
            totals[action] = totals.get(action, 0) + n
    messages = sum(totals.values())
    hits = store.symbol_counts(week)
    rule_names = _rule_names(settings)
    rules = [(s, n) for s, n in hits if s in rule_names][:10]
    labelled = store.labels_against_actions(week)
    held = ("quarantine", "reject", "discard")
    false_positives = sum(n for label, action, n in labelled if label == "ham" and action in held)
    false_negatives = sum(
        n for label, action, n in labelled if label != "ham" and action == "accept"
    )
    failures = store.failure_counts(day)
    symbols = hits[:15]
    senders = store.top_senders(week, 10)
    domains = store.top_sender_domains(week, 10)
    return {
        "chart": chart(buckets),
        "totals": totals,
        "messages": messages,
        "symbols": symbols,
        "senders": senders,
        "domains": domains,
        "rules": rules,
        "labelled": sum(n for *_, n in labelled),
        "false_positives": false_positives,
        "false_negatives": false_negatives,
        "failures": [(s, n, n / messages if messages else 0.0) for s, n in failures],
    }


def _rule_names(settings: Settings) -> set[str]:
    from gateway.pipeline import known_symbols
    from gateway.policy.rules import RuleSetError, load_rules

    try:
        return set(load_rules(settings.rules.paths, known_symbols([])).names)
    except (RuleSetError, OSError):
        return set()
