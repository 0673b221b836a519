"""The daily report for the shift: what happened in the last day, readable by anyone.

``mailmoat report daily`` writes it as HTML (charts as inline SVG, no script, no fetch) and
as text, and can mail both (multipart/alternative) through the configured backend. The
numbers come from the event store: the console's overview for the day, plus the model's
drift against the week, antivirus signature age, the store's size, the day's refused
reloads, and the alerts that fired, from the Prometheus that evaluates the shipped alert
rules (``[report] prometheus_url``).
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

from gateway.clients.clamd import ClamdClient, ClamdError
from gateway.config import Settings
from gateway.events import EventFilter, EventKind
from gateway.store import Store, open_store
from gateway.web.overview import summary

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Report:
    """One report in its two forms."""

    subject: str
    html: str
    text: str

    def message(self, sender: str, to: str) -> bytes:
        """The report as a mail: text and HTML alternatives."""
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = to
        mail["Subject"] = self.subject
        mail["Date"] = email.utils.formatdate(localtime=True)
        mail["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
        mail.set_content(self.text)
        mail.add_alternative(self.html, subtype="html")
        return mail.as_bytes(policy=email.policy.SMTP)


def model_drift(store: Store, now: float) -> dict[str, float]:
    """The share of mail the model calls spam, and its mean ML score, day against week."""
    figures: dict[str, float] = {}
    for name, since in (("day", now - DAY), ("week", now - 7 * DAY)):
        counts = store.model_verdicts(since)
        spam, ham = counts.get("ML_SPAM", (0, 0.0)), counts.get("ML_HAM", (0, 0.0))
        total = spam[0] + ham[0]
        figures[f"spam_share_{name}"] = spam[0] / total if total else 0.0
        figures[f"mean_spam_score_{name}"] = spam[1]
    return figures


def signature_age(settings: Settings, now: float) -> float | None:
    """Days since clamd's database was built, or None when unknown (down, no dated DB)."""
    from gateway.service import signatures_time

    clamd = settings.antivirus

    async def ask() -> str:
        client = ClamdClient(clamd.address, min(clamd.timeout, 5.0), 1, clamd.chunk_size)
        return await client.version()

    try:
        built = signatures_time(asyncio.run(ask()))
    except (ClamdError, OSError):
        return None
    return None if built is None else (now - built) / DAY


@dataclass(frozen=True, slots=True)
class FiredAlert:
    """One alert series that was firing at some point of the day."""

    name: str
    labels: dict[str, str]
    first: float
    last: float

    def describe(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        span = f"{_hhmm(self.first)} to {_hhmm(self.last)} UTC"
        return f"{self.name} ({where}): firing from {span}" if where else f"{self.name}: {span}"


def _hhmm(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M")


def fired_alerts(url: str, timeout: float, now: float) -> list[FiredAlert] | str:
    """The alerts firing at any evaluation in the day before ``now``; a sentence if unknown.

    Reads Prometheus's own ALERTS series (every sample of the day, not a coarse range query,
    so an alert that fired for one evaluation is not missed).
    """
    if not url:
        return "not known: set [report] prometheus_url to the Prometheus that runs the alerts"
    query = urllib.parse.urlencode(
        {"query": f'ALERTS{{alertstate="firing"}}[{int(DAY)}s]', "time": f"{now:.3f}"}
    )
    endpoint = f"{url.rstrip('/')}/api/v1/query?{query}"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as answer:  # noqa: S310 - configured URL
            body = json.loads(answer.read(10_000_000))
    except (OSError, ValueError) as exc:
        return f"not known: Prometheus at {url} did not answer ({exc})"
    if body.get("status") != "success":
        return f"not known: Prometheus at {url} refused the query ({body.get('error', '?')})"
    fired = []
    for series in body.get("data", {}).get("result", []):
        labels = dict(series.get("metric", {}))
        times = [float(t) for t, _ in series.get("values", [])]
        if not times:
            continue
        name = labels.pop("alertname", "?")
        labels.pop("alertstate", None)
        labels.pop("__name__", None)
        fired.append(FiredAlert(name, labels, min(times), max(times)))
    return sorted(fired, key=lambda a: (a.first, a.name))


def store_bytes(settings: Settings) -> int:
    """What the store takes on disk (events, quarantine)."""
    root = settings.store.path
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def daily(settings: Settings, now: float | None = None) -> Report:
    """The report of the day before ``now``."""
    now = now or time.time()
    store = open_store(settings.store)
    try:
        data = summary(store, settings, now, days=1.0)
        drift = model_drift(store, now)
        notable = [
            e
            for kind in (EventKind.RELOAD_FAILED,)
            for e in store.list(EventFilter(kind=kind, since=now - DAY, limit=50))
        ]
    finally:
        store.close()
    age = signature_age(settings, now)
    size = store_bytes(settings)
    alerts = fired_alerts(settings.report.prometheus_url, settings.report.prometheus_timeout, now)
    day = datetime.fromtimestamp(now - DAY, UTC).strftime("%Y-%m-%d %H:%M")
    until = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M")
    subject = f"Mailmoat daily report, {day} to {until} UTC: {data['messages']} messages"
    facts = Facts(data, drift, age, size, notable, alerts)
    return Report(subject, _html(subject, facts), _text(subject, facts))


@dataclass(frozen=True, slots=True)
class Facts:
    """What the report says, gathered once for both forms."""

    data: dict[str, Any]
    drift: dict[str, float]
    age: float | None
    size: int
    notable: list[Any]
    alerts: list[FiredAlert] | str


def _lines(facts: Facts) -> list[tuple[str, str]]:
    """(heading, body) pairs shared by both forms."""
    data, drift, age = facts.data, facts.drift, facts.age
    verdicts = ", ".join(f"{a} {n}" for a, n in data["totals"].items())
    failures = "; ".join(f"{s} {n} ({r:.2%})" for s, n, r in data["failures"]) or "none"
    alerts = facts.alerts if isinstance(facts.alerts, str) else (
        "; ".join(a.describe() for a in facts.alerts) or "none")  # fmt: skip
    return [
        ("Verdicts", f"{data['messages']} messages: {verdicts}"),
        ("Labels against verdicts", f"{data['labelled']} labelled: {data['false_positives']} "
         f"false positives (ham held or rejected), {data['false_negatives']} false negatives "
         "(spam accepted)"),
        ("Check failures and timeouts", failures),
        ("Alerts that fired", alerts),
        ("Model drift", f"spam share {drift['spam_share_day']:.1%} today against "
         f"{drift['spam_share_week']:.1%} this week; mean ML_SPAM score "
         f"{drift['mean_spam_score_day']:.2f} against {drift['mean_spam_score_week']:.2f}"),
        ("Antivirus signatures", "age unknown (clamd down, or no dated database loaded)"
         if age is None else f"{age:.1f} days old"),
        ("Store", f"{facts.size / 1e6:.1f} MB on disk"),
        ("Refused reloads",
         "; ".join(f"{e.id}: {e.reason[:120]}" for e in facts.notable) or "none"),
    ]  # fmt: skip


def _tops(data: dict[str, Any]) -> list[tuple[str, list[tuple[str, int]]]]:
    return [("Top symbols", data["symbols"]), ("Top rules", data["rules"]),
            ("Top senders", data["senders"])]  # fmt: skip


def _text(subject: str, facts: Facts) -> str:
    out = [subject, "=" * len(subject), ""]
    for heading, body in _lines(facts):
        out += [heading, f"  {body}", ""]
    for title, rows in _tops(facts.data):
        out.append(title)
        out += [f"  {n:>7}  {name}" for name, n in rows] or ["  none"]
        out.append("")
    return "\n".join(out)


def _html(subject: str, facts: Facts) -> str:
    sections = "".join(f"<h2>{escape(h)}</h2><p>{escape(b)}</p>" for h, b in _lines(facts))
    tables = "".join(
        f"<section><h2>{escape(title)}</h2><table>"
        + ("".join(f"<tr><td>{escape(name)}</td><td>{n}</td></tr>" for name, n in rows)
           or "<tr><td>none</td></tr>")
        + "</table></section>"
        for title, rows in _tops(facts.data)
    )  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(subject)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}td{padding:0 1em}"
        "section{display:inline-block;vertical-align:top;margin-right:2em}</style></head><body>"
        f"<h1>{escape(subject)}</h1><h2>Verdicts by hour</h2>{facts.data['chart']}{sections}"
        f"{tables}</body></html>"
    )


def write(report: Report, out: Path) -> list[Path]:
    """The HTML at ``out`` and the text beside it (``.txt``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    text = out.with_suffix(".txt")
    text.write_text(report.text, encoding="utf-8")
    return [out, text]
