"""The embedded event store: SQLite (WAL): events, labels, users, sessions, quarantine index."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import StoreBusy, StoreError, UnknownIdError
from gateway.events.schema import (
    LABELS,
    SCHEMA_VERSION,
    EventFilter,
    Label,
    Retained,
    SecurityEvent,
    validate_id,
)

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's (unless told not to)
# Senders one recipient may "always allow" (each held in memory by every worker).
MAX_ALLOWS = 500


def _message_ids(value: str | None) -> tuple[str, str] | None:
    """A Message-ID as stored, with and without its angle brackets."""
    if not value:
        return None
    bare = value.strip().strip("<>")
    return bare, f"<{bare}>"


def _queue_id(value: str | None) -> str | None:
    """A queue id (letters and digits only: Postfix's, ours), or None to ignore it."""
    if not value or not value.isalnum():
        return None
    return value


class EventStore(Protocol):
    """What the gateway needs of an event store (SQLite now; PostgreSQL can follow)."""

    def add(self, event: SecurityEvent, retained: Retained | None = None) -> None: ...
    def add_many(
        self, items: Sequence[tuple[SecurityEvent, Retained | None]], wait: bool = True
    ) -> None: ...
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
CREATE INDEX IF NOT EXISTS events_client_ip ON events (client_ip, time);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, time);
CREATE TABLE IF NOT EXISTS event_rcpts (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS event_rcpts_rcpt ON event_rcpts (rcpt, time);
CREATE INDEX IF NOT EXISTS event_rcpts_event ON event_rcpts (event_id);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5 (subject, content='');
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS used_links (
    digest TEXT PRIMARY KEY,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
CREATE TABLE IF NOT EXISTS event_symbols (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    symbol TEXT NOT NULL,
    score REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS event_symbols_lookup ON event_symbols (symbol, time, event_id);
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
CREATE TABLE IF NOT EXISTS retained (
    event_id TEXT PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    time REAL NOT NULL,
    expires REAL,
    raw BLOB,
    features BLOB,
    feature_version INTEGER
);
CREATE INDEX IF NOT EXISTS retained_expires ON retained (expires);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    author TEXT NOT NULL,
    note TEXT NOT NULL,
    time REAL NOT NULL,
    withdrawn REAL
);
CREATE INDEX IF NOT EXISTS labels_event ON labels (event_id, time);
CREATE TABLE IF NOT EXISTS sender_allows (
    rcpt TEXT NOT NULL,
    sender TEXT NOT NULL,
    author TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (rcpt, sender)
);
"""


class Checkpointer:
    """Copies the WAL into the database from a thread of its own, every ``interval`` seconds.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: that
    commit (and every message waiting on it) took 4-5 ms instead of 0.4 (p99 of the event
    writer 4.2 ms; 0.6 with this). A PASSIVE checkpoint never blocks the writer.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        failing = False
        while not self.stopping.wait(self.interval):
            try:
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                failing = False
            except sqlite3.Error as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("WAL checkpoint failed (will retry): %s", exc)
                failing = True

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self.stopping.set()
        self.thread.join()
        self.db.close()


class SqliteStore:
    """Events and the quarantine index in one SQLite file (WAL), safe to share across threads.

    ``checkpoint_every``: seconds between WAL checkpoints by a background thread (the
    gateway), instead of SQLite's automatic ones inside a commit (the CLI, the console).
    """

    def __init__(self, path: Path, checkpoint_every: float | None = None) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the process, and events are
            # written in groups. Transactions that must survive power loss too (the
            # quarantine index) ask for durable=True and are committed with FULL.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.db.executescript(_SCHEMA)
            self.db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            self.checkpointer = None
            if checkpoint_every:
                self.db.execute("PRAGMA wal_autocheckpoint=0")
                self.checkpointer = Checkpointer(path, checkpoint_every)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the event store: {exc}") from exc
        self.lock = threading.Lock()

    @contextmanager
    def transaction(self, durable: bool = False, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One serialised write transaction; sqlite errors become StoreError.

        ``durable``: the commit is fsync'd (synchronous=FULL), surviving power loss.
        ``wait=False``: StoreBusy at once, instead of waiting, when another thread of this
        process or another process (a worker) is writing: for a caller on the event loop.
        """
        if not self.lock.acquire(blocking=wait):
            raise StoreBusy(f"{self.path}: in use by another thread")
        try:
            try:
                if durable:
                    self.db.execute("PRAGMA synchronous=FULL")
                try:
                    self._begin(wait)
                    yield self.db
                    self.db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (disk full, read-only) can leave the transaction open;
                    # end it, or every later write on this connection fails too.
                    if self.db.in_transaction:
                        with suppress(sqlite3.Error):
                            self.db.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        self.db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
        finally:
            self.lock.release()

    def _begin(self, wait: bool) -> None:
        """BEGIN IMMEDIATE: take the write lock, waiting for it (busy_timeout) or not."""
        if wait:
            self.db.execute("BEGIN IMMEDIATE")
            return
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise StoreBusy(f"{self.path}: in use by another process") from exc
            raise
        finally:
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query under the lock."""
        with self.lock:
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def add(self, event: SecurityEvent, retained: Retained | None = None) -> None:
        """Store one event and its symbols (and what is retained of the message, if any)."""
        self.add_many([(event, retained)])

    def add_many(
        self, items: Sequence[tuple[SecurityEvent, Retained | None]], wait: bool = True
    ) -> None:
        """Store several events in one transaction (group commit); see transaction() for wait."""
        with self.transaction(wait=wait) as db:
            for event, retained in items:
                self._insert(db, event, retained)

    def _insert(
        self, db: sqlite3.Connection, event: SecurityEvent, retained: Retained | None
    ) -> None:
        cursor = db.execute(
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
                event.to_json(),
            ),
        )
        db.executemany(
            "INSERT INTO event_symbols (event_id, symbol, score, time) VALUES (?, ?, ?, ?)",
            [(event.id, s["name"], s.get("score", 0.0), event.time) for s in event.symbols],
        )
        db.executemany(
            "INSERT INTO event_rcpts (event_id, rcpt, time) VALUES (?, ?, ?)",
            [(event.id, r.lower(), event.time) for r in event.rcpts],
        )
        if event.subject:
            db.execute(
                "INSERT INTO events_fts (rowid, subject) VALUES (?, ?)",
                (cursor.lastrowid, event.subject),
            )
        if retained is not None:
            features = retained.features
            db.execute(
                "INSERT INTO retained (event_id, time, expires, raw, features, feature_version)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.time,
                    retained.expires,
                    None if retained.raw is None else zlib.compress(retained.raw, 6),
                    None if features is None else zlib.compress(json.dumps(features).encode()),
                    None if features is None else features.get("version"),
                ),
            )

    def retained(self, event_id: str) -> Retained | None:
        """The retained raw message and feature snapshot of an event, if any."""
        rows = self.query(
            "SELECT raw, features, expires FROM retained WHERE event_id = ?",
            (validate_id(event_id),),
        )
        if not rows:
            return None
        row = rows[0]
        raw = zlib.decompress(row["raw"]) if row["raw"] is not None else None
        features = json.loads(zlib.decompress(row["features"])) if row["features"] else None
        return Retained(raw, features, row["expires"])

    def add_label(
        self, event_id: str, label: str, source: str, author: str, note: str = ""
    ) -> Label:
        """Label an event (the latest label wins; earlier ones stay in the history).

        A labelled message is training data: its retained raw message no longer expires.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        self.get(event_id)
        entry = Label(event_id, label, source, author, note[:1000], time.time())
        with self.transaction() as db:
            db.execute(
                "INSERT INTO labels (event_id, label, source, author, note, time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry.event_id, entry.label, entry.source, entry.author, entry.note, entry.time),
            )
            db.execute("UPDATE retained SET expires = NULL WHERE event_id = ?", (event_id,))
        return entry

    def withdraw_labels(self, event_id: str, author: str) -> int:
        """Withdraw every active label of an event (unlearn); returns how many."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE labels SET withdrawn = ?, note = note || ? WHERE event_id = ?"
                " AND withdrawn IS NULL",
                (time.time(), f" [withdrawn by {author}]", validate_id(event_id)),
            )
            return int(cursor.rowcount)

    def labels(self, event_id: str) -> list[Label]:
        """The label history of an event, oldest first."""
        rows = self.query(
            "SELECT event_id, label, source, author, note, time, withdrawn FROM labels"
            " WHERE event_id = ? ORDER BY id",
            (validate_id(event_id),),
        )
        return [Label(**dict(r)) for r in rows]

    def current_label(self, event_id: str) -> Label | None:
        """The label in force: the newest that is not withdrawn."""
        active = [label for label in self.labels(event_id) if label.withdrawn is None]
        return active[-1] if active else None

    def labelled_messages(self, since: float | None, until: float | None) -> list[dict[str, Any]]:
        """Every event with a label in force, with its retained raw and features."""
        rows = self.query(
            "SELECT l.event_id, l.label, l.source, e.time, r.raw, r.features FROM labels l"
            " JOIN events e ON e.id = l.event_id LEFT JOIN retained r ON r.event_id = l.event_id"
            " WHERE l.withdrawn IS NULL AND l.id = (SELECT MAX(id) FROM labels"
            "   WHERE event_id = l.event_id AND withdrawn IS NULL)"
            " AND e.time >= ? AND e.time < ? ORDER BY e.time",
            (since or 0.0, until or 1e12),
        )
        result = []
        for row in rows:
            item = dict(row)
            item["raw"] = zlib.decompress(row["raw"]) if row["raw"] is not None else None
            item["features"] = (
                json.loads(zlib.decompress(row["features"])) if row["features"] else None
            )
            result.append(item)
        return result

    def add_user(self, name: str, password_hash: str, role: str) -> None:
        """Create or replace a console user (the hash comes from argon2, never a password).

        Replacing a user (a new password) ends every session they had.
        """
        with self.transaction() as db:
            db.execute(
                "INSERT INTO users (name, hash, role, created, disabled) VALUES (?, ?, ?, ?, 0)"
                " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, role = excluded.role,"
                " disabled = 0",
                (name, password_hash, role, time.time()),
            )
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def start_session(self, user: str, seconds: float) -> str:
        """A new console session for ``user``; its id is the only thing the cookie holds."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            db.execute(
                "INSERT INTO sessions (id, user, created, expires) VALUES (?, ?, ?, ?)",
                (session_id, user, now, now + seconds),
            )
        return session_id

    def session_user(self, session_id: str) -> str | None:
        """The user of a live session, or None when it ended, expired or never was."""
        rows = self.query(
            "SELECT user FROM sessions WHERE id = ? AND expires >= ?", (session_id, time.time())
        )
        return str(rows[0]["user"]) if rows else None

    def end_session(self, session_id: str) -> None:
        """Log one session out, server-side (the cookie is worthless from now on)."""
        with self.transaction() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def use_link(self, token: str) -> bool:
        """Mark a single-use link used; False when it already was (a second click)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO used_links (digest, time) VALUES (?, ?)",
                           (digest, time.time()))  # fmt: skip
        except StoreError as exc:
            if "UNIQUE" in str(exc):
                return False
            raise
        return True

    def allow_sender(self, rcpt: str, sender: str, author: str) -> bool:
        """A mailbox owner's "always allow" of one sender; False when at MAX_ALLOWS already."""
        rcpt, sender = rcpt.lower(), sender.lower()
        with self.transaction() as db:
            (count,) = db.execute(
                "SELECT count(*) FROM sender_allows WHERE rcpt = ?", (rcpt,)
            ).fetchone()
            if count >= MAX_ALLOWS:
                return False
            db.execute(
                "INSERT OR REPLACE INTO sender_allows (rcpt, sender, author, time)"
                " VALUES (?, ?, ?, ?)",
                (rcpt, sender, author, time.time()),
            )
        return True

    def forget_sender(self, rcpt: str, sender: str) -> None:
        """Take one sender off a recipient's allow list."""
        with self.transaction() as db:
            db.execute("DELETE FROM sender_allows WHERE rcpt = ? AND sender = ?",
                       (rcpt.lower(), sender.lower()))  # fmt: skip

    def sender_allows(self, rcpt: str | None = None) -> dict[str, set[str]]:
        """Allowed senders by recipient: every recipient's, or one's."""
        sql = "SELECT rcpt, sender FROM sender_allows"
        rows = self.query(sql + " WHERE rcpt = ?", (rcpt.lower(),)) if rcpt else self.query(sql)
        allows: dict[str, set[str]] = {}
        for row in rows:
            allows.setdefault(row["rcpt"], set()).add(row["sender"])
        return allows

    def user(self, name: str) -> dict[str, Any] | None:
        """One user's row, or None."""
        rows = self.query(
            "SELECT name, hash, role, created, disabled FROM users WHERE name = ?", (name,)
        )
        return dict(rows[0]) if rows else None

    def users(self) -> list[dict[str, Any]]:
        """Every user (without hashes)."""
        return [
            dict(r)
            for r in self.query("SELECT name, role, created, disabled FROM users ORDER BY name")
        ]

    def set_user(self, name: str, role: str | None = None, disabled: bool | None = None) -> None:
        """Change a user's role or disable/enable them."""
        with self.transaction() as db:
            if role is not None:
                db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            if disabled is not None:
                db.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
                # Disabling ends every session; enabling again does not bring them back.
                db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def find_by_message_id(self, message_id: str) -> list[str]:
        """Ids of message events with this Message-ID (newest first)."""
        rows = self.query(
            "SELECT id FROM events WHERE message_id = ? AND kind = 'message' ORDER BY time DESC",
            (message_id,),
        )
        return [r["id"] for r in rows]

    def purge(self, now: float | None = None, events_before: float | None = None) -> dict[str, int]:
        """Drop expired raw messages (snapshots stay); optionally old unlabelled events."""
        now = now if now is not None else time.time()
        with self.transaction() as db:
            raw = db.execute(
                "UPDATE retained SET raw = NULL WHERE expires IS NOT NULL AND expires < ?"
                " AND raw IS NOT NULL",
                (now,),
            ).rowcount
            events = 0
            if events_before is not None:
                # A contentless full-text index forgets a row only when told its old values.
                db.execute(
                    "INSERT INTO events_fts (events_fts, rowid, subject) SELECT 'delete', rowid,"
                    " subject FROM events WHERE subject != '' AND time < ?"
                    " AND id NOT IN (SELECT event_id FROM labels)"
                    " AND id NOT IN (SELECT id FROM quarantine WHERE status = 'held')",
                    (events_before,),
                )
                events = db.execute(
                    "DELETE FROM events WHERE time < ? AND id NOT IN (SELECT event_id FROM labels)"
                    " AND id NOT IN (SELECT id FROM quarantine WHERE status = 'held')",
                    (events_before,),
                ).rowcount
        return {"raw_messages": int(raw), "events": int(events)}

    def get(self, event_id: str) -> SecurityEvent:
        """One event by id."""
        rows = self.query("SELECT data FROM events WHERE id = ?", (validate_id(event_id),))
        if not rows:
            raise UnknownIdError(f"no event {event_id}")
        return SecurityEvent.from_dict(json.loads(rows[0]["data"]))

    def list(self, where: EventFilter) -> list[SecurityEvent]:
        """Events matching the filter, newest first."""
        # One clause per simple filter that is set; each takes one parameter.
        simple = [
            ("e.time >= ?", where.since),
            ("e.time < ?", where.until),
            ("e.action = ?", where.action or None),
            ("e.mail_from = ?", where.sender.lower() if where.sender else None),
            ("e.kind = ?", where.kind or None),
            (
                "e.id IN (SELECT event_id FROM event_rcpts WHERE rcpt = ?)",
                where.recipient.lower() if where.recipient else None,
            ),
            ("e.client_ip = ?", where.client_ip or None),
            ("e.message_id IN (?, ?)", _message_ids(where.message_id)),
            # Backend replies ("queued as X") and the milter's MTA macros (i) are in the
            # event's JSON: found by substring, within the time range asked.
            ("instr(e.data, ?) > 0", _queue_id(where.queue_id)),
        ]
        clauses = [clause for clause, value in simple if value is not None]
        params: list[Any] = []
        for _, value in simple:
            if isinstance(value, tuple):
                params.extend(value)
            elif value is not None:
                params.append(value)
        if where.text:
            words = re.findall(r"\w+", where.text)
            if words:
                clauses.append("e.rowid IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
                params.append(" ".join(f'"{w}"' for w in words[:10]))
        if where.label == "none":
            clauses.append("e.id NOT IN (SELECT event_id FROM labels WHERE withdrawn IS NULL)")
        elif where.label:
            clauses.append(
                "e.id IN (SELECT l.event_id FROM labels l WHERE l.withdrawn IS NULL AND l.label = ?"
                " AND l.id = (SELECT MAX(id) FROM labels WHERE event_id = l.event_id"
                " AND withdrawn IS NULL))"
            )
            params.append(where.label)
        if where.before is not None:
            clauses.append("(e.time < ? OR (e.time = ? AND e.id < ?))")
            params.extend([where.before[0], where.before[0], where.before[1]])
        if where.symbol:
            # Walk the (symbol, time) index newest first instead of collecting every event
            # that ever had a common symbol: constant time for the first pages.
            sql = (
                "SELECT e.data FROM event_symbols x JOIN events e ON e.id = x.event_id"
                " WHERE x.symbol = ?"
            )
            params.insert(0, where.symbol)
            order = " ORDER BY x.time DESC, x.event_id DESC LIMIT ?"
            sql += "".join(" AND " + c for c in clauses) + order
        else:
            sql = "SELECT e.data FROM events e"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY e.time DESC, e.id DESC LIMIT ?"
        params.append(where.limit)
        return [SecurityEvent.from_dict(json.loads(r["data"])) for r in self.query(sql, params)]

    def close(self) -> None:
        """Close the database (and stop the checkpoint thread, if this store runs one)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        with self.lock:
            self.db.close()
