"""What a security event is: its kinds, its fields, its JSON shape, and how to ask for some.

``SCHEMA_VERSION`` is in every event's JSON: training reads events, so a change of shape is a
new version.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.errors import UnknownIdError


class EventKind(enum.StrEnum):
    """What an event is about (the ``kind`` field; stored and filtered as its text)."""

    MESSAGE = "message"  # one message decided (delivered, tagged, quarantined, refused...)
    CONNECTION_REFUSED = "connection_refused"
    HELO_REFUSED = "helo_refused"
    MAIL_REFUSED = "mail_refused"
    MAIL_DEFERRED = "mail_deferred"
    RCPT_REFUSED = "rcpt_refused"
    RCPT_DEFERRED = "rcpt_deferred"
    DATA_REFUSED = "data_refused"
    RELOAD = "reload"
    RELOAD_FAILED = "reload_failed"
    QUARANTINE_RELEASE = "quarantine_release"
    QUARANTINE_DELETE = "quarantine_delete"
    AUDIT = "audit"  # a console action


SCHEMA_VERSION = 1
EVENT_ID = re.compile(r"^[0-9a-f]{16}\.[0-9]{1,9}$")


def validate_id(event_id: str) -> str:
    """Accept only ids of our own shape: they end up in file names and SQL parameters."""
    if not EVENT_ID.fullmatch(event_id):
        raise UnknownIdError(f"invalid id {event_id!r} (expected 16 hex digits, '.', a number)")
    return event_id


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """What happened to one message or one refused SMTP step, with everything that explains it."""

    id: str
    kind: str
    time: float = field(default_factory=time.time)
    client_ip: str = ""
    helo: str = ""
    tls: str = ""
    mail_from: str = ""
    rcpts: tuple[str, ...] = ()
    message_id: str = ""
    subject: str = ""
    size: int = 0
    score: float | None = None
    action: str = ""
    reason: str = ""
    smtp_reply: str = ""
    backend_reply: str = ""
    symbols: tuple[Mapping[str, Any], ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    # The JSON line, built once: the events log and the store both write it (not a field of
    # the event's shape; an event is never changed once made).
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of an event (``schema`` versioned: training reads it).

        Built field by field: ``dataclasses.asdict`` deep-copies recursively and cost 0.1 ms
        an event, twice per message (log line, store). Containers are copied one level down.
        """
        data: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for name in _EVENT_FIELDS:
            data[name] = getattr(self, name)
        data["rcpts"] = list(self.rcpts)
        data["symbols"] = [dict(s) for s in self.symbols]
        data["timings_ms"] = dict(self.timings_ms)
        data["versions"] = dict(self.versions)
        data["details"] = dict(self.details)
        return data

    def to_json(self) -> str:
        """One compact line: the events log, JSON lines files."""
        line = self._json
        if line is None:
            line = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
            object.__setattr__(self, "_json", line)  # frozen: a cache, not a change
        return line

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecurityEvent:
        """Inverse of to_dict (unknown keys are ignored, for forward compatibility)."""
        names = set(_EVENT_FIELDS)
        values = {k: v for k, v in data.items() if k in names}
        values["rcpts"] = tuple(values.get("rcpts", ()))
        values["symbols"] = tuple(values.get("symbols", ()))
        return cls(**values)


_EVENT_FIELDS = tuple(f.name for f in fields(SecurityEvent) if f.init)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list."""

    since: float | None = None
    until: float | None = None
    action: str | None = None
    sender: str | None = None
    symbol: str | None = None
    kind: str | None = None
    recipient: str | None = None
    client_ip: str | None = None
    text: str | None = None  # words of the subject (full-text search)
    label: str | None = None  # the label in force; "none" for unlabelled
    message_id: str | None = None  # the Message-ID header, with or without <>
    queue_id: str | None = None  # the backend's or the MTA's queue id (letters and digits)
    before: tuple[float, str] | None = None  # keyset cursor: (time, id) of the last row seen
    limit: int = 100


LABELS = ("spam", "ham", "phish", "malware")


@dataclass(frozen=True, slots=True)
class Retained:
    """What is kept of a message for retraining: raw bytes (maybe) and a feature snapshot."""

    raw: bytes | None
    features: Mapping[str, Any] | None
    expires: float | None


@dataclass(frozen=True, slots=True)
class Label:
    """One analyst label with its provenance; withdrawn labels stay in the history."""

    event_id: str
    label: str
    source: str
    author: str
    note: str
    time: float
    withdrawn: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for the CLI."""
        return asdict(self)


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: float | None = None) -> float:
    """Parse '2h', '7d' (ago) or an ISO 8601 time into a Unix timestamp."""
    match = _RELATIVE.match(text.strip())
    if match:
        try:
            delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError as exc:  # 99999999999999d: past what a date can say
            raise ValueError(f"invalid time {text!r}: too far back") from exc
        return (now if now is not None else time.time()) - delta.total_seconds()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"invalid time {text!r}: use e.g. 2h, 7d or 2026-11-21T10:00") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
