"""The daily report for the shift: what happened in the last day, readable by anyone.

``mailmoat report daily`` writes it as HTML (charts as inline SVG, no script, no fetch) and
as text, and can mail both (multipart/alternative) through the configured backend. The
numbers come from the event store: the console's overview for the day, plus the model's
drift against the week, antivirus signature age, the store's size, and the day's refused
reloads and store failures.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

from gateway.clients.clamd import ClamdClient, ClamdError
from gateway.config import Settings
from gateway.events import EventFilter, EventKind, SqliteStore
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


def model_drift(store: SqliteStore, now: float) -> dict[str, float]:
    """The share of mail the model calls spam, and its mean ML score, day against week."""
    figures: dict[str, float] = {}
    for name, since in (("day", now - DAY), ("week", now - 7 * DAY)):
        rows = store.query(
            "SELECT symbol, COUNT(*) AS n, AVG(score) AS s FROM event_symbols WHERE time >= ?"
            " AND symbol IN ('ML_SPAM', 'ML_HAM') GROUP BY symbol",
            (since,),
        )
        counts = {r["symbol"]: (int(r["n"]), float(r["s"] or 0.0)) for r in rows}
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


def store_bytes(settings: Settings) -> int:
    """What the store takes on disk (events, quarantine)."""
    root = settings.store.path
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def daily(settings: Settings, now: float | None = None) -> Report:
    """The report of the day before ``now``."""
    now = now or time.time()
    store = SqliteStore(settings.store.database)
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
    day = datetime.fromtimestamp(now - DAY, UTC).strftime("%Y-%m-%d %H:%M")
    until = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M")
    subject = f"Mailmoat daily report, {day} to {until} UTC: {data['messages']} messages"
    return Report(subject, _html(subject, data, drift, age, size, notable),
                  _text(subject, data, drift, age, size, notable))  # fmt: skip


def _lines(data: dict[str, Any], drift: dict[str, float], age: float | None, size: int,
           notable: list[Any]) -> list[tuple[str, str]]:  # fmt: skip
    """(heading, body) pairs shared by both forms."""
    verdicts = ", ".join(f"{a} {n}" for a, n in data["totals"].items())
    failures = "; ".join(f"{s} {n} ({r:.2%})" for s, n, r in data["failures"]) or "none"
    return [
        ("Verdicts", f"{data['messages']} messages: {verdicts}"),
        ("Labels against verdicts", f"{data['labelled']} labelled: {data['false_positives']} "
         f"false positives (ham held or rejected), {data['false_negatives']} false negatives "
         "(spam accepted)"),
        ("Check failures and timeouts", failures),
        ("Model drift", f"spam share {drift['spam_share_day']:.1%} today against "
         f"{drift['spam_share_week']:.1%} this week; mean ML_SPAM score "
         f"{drift['mean_spam_score_day']:.2f} against {drift['mean_spam_score_week']:.2f}"),
        ("Antivirus signatures", "age unknown (clamd down, or no dated database loaded)"
         if age is None else f"{age:.1f} days old"),
        ("Store", f"{size / 1e6:.1f} MB on disk"),
        ("Refused reloads", "; ".join(f"{e.id}: {e.reason[:120]}" for e in notable) or "none"),
    ]  # fmt: skip


def _text(subject: str, data: dict[str, Any], drift: dict[str, float], age: float | None,
          size: int, notable: list[Any]) -> str:  # fmt: skip
    out = [subject, "=" * len(subject), ""]
    for heading, body in _lines(data, drift, age, size, notable):
        out += [heading, f"  {body}", ""]
    for title, rows in (("Top symbols", data["symbols"]), ("Top rules", data["rules"]),
                        ("Top senders", data["senders"])):  # fmt: skip
        out.append(title)
        out += [f"  {n:>7}  {name}" for name, n in rows] or ["  none"]
        out.append("")
    return "\n".join(out)


def _html(subject: str, data: dict[str, Any], drift: dict[str, float], age: float | None,
          size: int, notable: list[Any]) -> str:  # fmt: skip
    sections = "".join(
        f"<h2>{escape(h)}</h2><p>{escape(b)}</p>"
        for h, b in _lines(data, drift, age, size, notable)
    )
    tables = "".join(
        f"<section><h2>{escape(title)}</h2><table>"
        + ("".join(f"<tr><td>{escape(name)}</td><td>{n}</td></tr>" for name, n in rows)
           or "<tr><td>none</td></tr>")
        + "</table></section>"
        for title, rows in (("Top symbols", data["symbols"]), ("Top rules", data["rules"]),
                            ("Top senders", data["senders"]))
    )  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(subject)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}td{padding:0 1em}"
        "section{display:inline-block;vertical-align:top;margin-right:2em}</style></head><body>"
        f"<h1>{escape(subject)}</h1><h2>Verdicts by hour</h2>{data['chart']}{sections}{tables}"
        "</body></html>"
    )


def write(report: Report, out: Path) -> list[Path]:
    """The HTML at ``out`` and the text beside it (``.txt``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    text = out.with_suffix(".txt")
    text.write_text(report.text, encoding="utf-8")
    return [out, text]
