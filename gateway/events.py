"""Security events: one per message decision (and per refused step), in SQLite and JSON lines."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import StoreError, UnknownIdError

log = logging.getLogger(__name__)
event_log = logging.getLogger("gateway.events")

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

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of an event (``schema`` versioned: training reads it)."""
        data = asdict(self)
        data["rcpts"] = list(self.rcpts)
        data["symbols"] = [dict(s) for s in self.symbols]
        return {"schema": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecurityEvent:
        """Inverse of to_dict (unknown keys are ignored, for forward compatibility)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        values["rcpts"] = tuple(values.get("rcpts", ()))
        values["symbols"] = tuple(values.get("symbols", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list."""

    since: float | None = None
    until: float | None = None
    action: str | None = None
    sender: str | None = None
    symbol: str | None = None
    kind: str | None = None
    limit: int = 100


class EventStore(Protocol):
    """What the gateway needs of an event store (SQLite now; PostgreSQL can follow)."""

    def add(self, event: SecurityEvent) -> None: ...
    def get(self, event_id: str) -> SecurityEvent: ...
    def list(self, where: EventFilter) -> list[SecurityEvent]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    action TEXT NOT NULL,
    score REAL,
    subject TEXT NOT NULL,
    message_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_sender ON events (mail_from, time);
CREATE INDEX IF NOT EXISTS events_action ON events (action, time);
CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id);
CREATE TABLE IF NOT EXISTS event_symbols (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    symbol TEXT NOT NULL,
    score REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS event_symbols_symbol ON event_symbols (symbol, time);
CREATE INDEX IF NOT EXISTS event_symbols_event ON event_symbols (event_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    mail_from TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    subject TEXT NOT NULL,
    score REAL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (status, time);
"""


class SqliteStore:
    """Events and the quarantine index in one SQLite file (WAL), safe to share across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed quarantine row survives power loss, as the message file does.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(_SCHEMA)
            self.db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the event store: {exc}") from exc
        self.lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One serialised write transaction; sqlite errors become StoreError."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query under the lock."""
        with self.lock:
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def add(self, event: SecurityEvent) -> None:
        """Store one event and its symbols."""
        record = event.to_dict()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (id, time, kind, client_ip, mail_from, action, score, subject,"
                " message_id, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.time,
                    event.kind,
                    event.client_ip,
                    event.mail_from.lower(),
                    event.action,
                    event.score,
                    event.subject,
                    event.message_id,
                    json.dumps(record, ensure_ascii=False),
                ),
            )
            db.executemany(
                "INSERT INTO event_symbols (event_id, symbol, score, time) VALUES (?, ?, ?, ?)",
                [(event.id, s["name"], s.get("score", 0.0), event.time) for s in event.symbols],
            )

    def get(self, event_id: str) -> SecurityEvent:
        """One event by id."""
        rows = self.query("SELECT data FROM events WHERE id = ?", (validate_id(event_id),))
        if not rows:
            raise UnknownIdError(f"no event {event_id}")
        return SecurityEvent.from_dict(json.loads(rows[0]["data"]))

    def list(self, where: EventFilter) -> list[SecurityEvent]:
        """Events matching the filter, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if where.since is not None:
            clauses.append("e.time >= ?")
            params.append(where.since)
        if where.until is not None:
            clauses.append("e.time < ?")
            params.append(where.until)
        if where.action:
            clauses.append("e.action = ?")
            params.append(where.action)
        if where.sender:
            clauses.append("e.mail_from = ?")
            params.append(where.sender.lower())
        if where.kind:
            clauses.append("e.kind = ?")
            params.append(where.kind)
        if where.symbol:
            clauses.append("e.id IN (SELECT event_id FROM event_symbols WHERE symbol = ?)")
            params.append(where.symbol)
        sql = "SELECT e.data FROM events e"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY e.time DESC LIMIT ?"
        params.append(where.limit)
        return [SecurityEvent.from_dict(json.loads(r["data"])) for r in self.query(sql, params)]

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()


class JsonLinesSink:
    """Appends each event as one JSON line for log shippers (opened per write: rotation-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: SecurityEvent) -> None:
        """Append one line."""
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from exc


class EventRecorder:
    """Sends each event to the store, the optional JSON lines file and the events logger."""

    def __init__(self, store: EventStore, jsonl: JsonLinesSink | None = None) -> None:
        self.store = store
        self.jsonl = jsonl

    def record(self, event: SecurityEvent) -> None:
        """Record one event; raise StoreError when the store could not keep it."""
        if event_log.isEnabledFor(logging.INFO):
            event_log.info(json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")))
        try:
            if self.jsonl is not None:
                self.jsonl.write(event)
        finally:
            self.store.add(event)


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: float | None = None) -> float:
    """Parse '2h', '7d' (ago) or an ISO 8601 time into a Unix timestamp."""
    match = _RELATIVE.match(text.strip())
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now if now is not None else time.time()) - delta.total_seconds()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"invalid time {text!r}: use e.g. 2h, 7d or 2026-11-21T10:00") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
