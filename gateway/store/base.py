"""What the rest of Mailmoat asks of a store, written once for both engines.

The store keeps the event log (appended in groups, searched), labels, console users and
sessions, single-use links, mailbox owners' allowed senders, the quarantine index, and the
named queries the console, the daily report and rule replay read. Every SQL statement lives
in this package; callers name what they want. The SQL here is common to SQLite and
PostgreSQL (``?`` placeholders, ``ON CONFLICT``); what differs (connections and
transactions, full-text search, a few functions) is each engine's (sqlite.py, postgres.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import UnknownIdError
from gateway.events.schema import LABELS, EventFilter, Label, Retained, SecurityEvent, validate_id

# Senders one recipient may "always allow" (each held in memory by every worker).
MAX_ALLOWS = 500
# The label in force for the event ``l.event_id``: the newest that is not withdrawn.
LABEL_IN_FORCE = (
    "l.withdrawn IS NULL AND l.id = (SELECT MAX(id) FROM labels"
    " WHERE event_id = l.event_id AND withdrawn IS NULL)"
)
Row = Mapping[str, Any]


def redacted(url: str) -> str:
    """A store or service URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class Cursor(Protocol):
    """What a statement run in a transaction gives back."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...


class Tx(Protocol):
    """A transaction: statements with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """The index row of one quarantined message."""

    id: str
    time: float
    mail_from: str
    rcpts: tuple[str, ...]
    subject: str
    score: float | None
    reason: str
    size: int
    status: str

    def to_dict(self) -> dict[str, object]:
        """JSON shape for the CLI."""
        return {"id": self.id, "time": self.time, "mail_from": self.mail_from,
                "rcpts": list(self.rcpts), "subject": self.subject, "score": self.score,
                "reason": self.reason, "size": self.size, "status": self.status}  # fmt: skip


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


def _like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _quarantine_row(r: Row) -> QuarantineRow:
    return QuarantineRow(
        id=r["id"], time=r["time"], mail_from=r["mail_from"],
        rcpts=tuple(json.loads(r["rcpts"])), subject=r["subject"], score=r["score"],
        reason=r["reason"], size=r["size"], status=r["status"],
    )  # fmt: skip


class Store(ABC):
    """One store, whichever engine; safe to share across threads."""

    # Where it is, for messages ("var/store/events.sqlite3", "postgresql://db1/mailmoat").
    location: str = ""
    # Whether a group of events may be committed on the event loop (a local SQLite write
    # takes tens of microseconds; a network round trip must go to a thread).
    commits_on_loop: bool = False
    # SQL that differs: instr(haystack, needle), the UTC day of a time column.
    instr: str = "instr"

    # --- engine ---------------------------------------------------------------------

    @abstractmethod
    def transaction(self, durable: bool = False, wait: bool = True) -> AbstractContextManager[Tx]:
        """One write transaction. ``durable``: survives power loss once committed.
        ``wait=False``: StoreBusy at once rather than waiting for another writer."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read query (``?`` placeholders); rows by column name."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (and threads)."""

    @abstractmethod
    def _text_match(self, words: list[str]) -> tuple[str, str]:
        """A clause on ``e`` for subjects holding every word, and its one parameter."""

    @abstractmethod
    def _index_text(self, tx: Tx, event: SecurityEvent) -> None:
        """Index the subject for search, where the engine needs it done by hand."""

    @abstractmethod
    def _forget_text(self, tx: Tx, where: str, params: Sequence[Any]) -> None:
        """Drop the search entries of the events ``where`` selects (before their delete)."""

    @abstractmethod
    def _day(self, column: str) -> str:
        """SQL for the UTC day (YYYY-MM-DD) of a time column."""

    @abstractmethod
    def _hour_since(self, column: str) -> str:
        """SQL for whole hours between a ``?`` time and a time column (a non-negative int)."""

    def ping(self) -> None:
        """A small write (a read would pass on a full disk); StoreError when it fails."""
        with self.transaction() as tx:
            tx.execute("UPDATE meta SET value = value WHERE key = 'schema'")

    # --- events -----------------------------------------------------------------------

    def add(self, event: SecurityEvent, retained: Retained | None = None) -> None:
        """Store one event and its symbols (and what is retained of the message, if any)."""
        self.add_many([(event, retained)])

    def add_many(
        self, items: Sequence[tuple[SecurityEvent, Retained | None]], wait: bool = True
    ) -> None:
        """Store several events in one transaction (group commit); see transaction() for wait."""
        with self.transaction(wait=wait) as tx:
            for event, retained in items:
                self._insert(tx, event, retained)

    def _insert(self, tx: Tx, event: SecurityEvent, retained: Retained | None) -> None:
        # An engine that partitions by time adds a bucket to every row (``_bucket``): the
        # event's time, or KEPT for what must outlive expiry (a quarantined message).
        extra = self._bucket(event)
        col, val = (", bucket", ", ?") if extra else ("", "")
        tx.execute(
            "INSERT INTO events (id, time, kind, client_ip, mail_from, action, score, subject,"
            f" message_id, data{col}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?{val})",
            (event.id, event.time, event.kind, event.client_ip, event.mail_from.lower(),
             event.action, event.score, event.subject, event.message_id, event.to_json(),
             *extra),
        )  # fmt: skip
        if event.symbols:
            tx.executemany(
                f"INSERT INTO event_symbols (event_id, symbol, score, time{col})"
                f" VALUES (?, ?, ?, ?{val})",
                [(event.id, s["name"], s.get("score", 0.0), event.time, *extra)
                 for s in event.symbols],
            )  # fmt: skip
        if event.rcpts:
            tx.executemany(
                f"INSERT INTO event_rcpts (event_id, rcpt, time{col}) VALUES (?, ?, ?{val})",
                [(event.id, r.lower(), event.time, *extra) for r in event.rcpts],
            )
        if event.subject:
            self._index_text(tx, event)
        if retained is not None:
            features = retained.features
            tx.execute(
                "INSERT INTO retained (event_id, time, expires, raw, features, feature_version"
                f"{col}) VALUES (?, ?, ?, ?, ?, ?{val})",
                (
                    event.id,
                    event.time,
                    retained.expires,
                    None if retained.raw is None else zlib.compress(retained.raw, 6),
                    None if features is None else zlib.compress(json.dumps(features).encode()),
                    None if features is None else features.get("version"),
                    *extra,
                ),
            )

    def _bucket(self, event: SecurityEvent) -> tuple[float, ...]:
        """The partition bucket of an event's rows, for an engine that partitions: ()."""
        return ()

    @abstractmethod
    def _keep(self, tx: Tx, event_id: str) -> None:
        """Make an event outlive expiry (labelled, held): for an engine that partitions."""

    def get(self, event_id: str) -> SecurityEvent:
        """One event by id."""
        rows = self.query("SELECT data FROM events WHERE id = ?", (validate_id(event_id),))
        if not rows:
            raise UnknownIdError(f"no event {event_id}")
        return SecurityEvent.from_dict(json.loads(rows[0]["data"]))

    def find_by_message_id(self, message_id: str) -> list[str]:
        """Ids of message events with this Message-ID (newest first)."""
        rows = self.query(
            "SELECT id FROM events WHERE message_id = ? AND kind = 'message' ORDER BY time DESC",
            (message_id,),
        )
        return [r["id"] for r in rows]

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

    def retained_messages(self, since: float | None, until: float | None) -> Iterator[
        tuple[SecurityEvent, bytes]
    ]:  # fmt: skip
        """Message events with their retained raw message, oldest first (rule replay)."""
        rows = self.query(
            "SELECT e.data AS data, r.raw AS raw FROM events e JOIN retained r"
            " ON r.event_id = e.id WHERE e.kind = 'message' AND r.raw IS NOT NULL"
            " AND e.time >= ? AND e.time < ? ORDER BY e.time",
            (since or 0.0, until or 1e12),
        )
        for row in rows:
            yield SecurityEvent.from_dict(json.loads(row["data"])), zlib.decompress(row["raw"])

    def purge(self, now: float | None = None, events_before: float | None = None) -> dict[str, int]:
        """Drop expired raw messages (snapshots stay); optionally old unlabelled events."""
        now = now if now is not None else time.time()
        with self.transaction() as tx:
            raw = tx.execute(
                "UPDATE retained SET raw = NULL WHERE expires IS NOT NULL AND expires < ?"
                " AND raw IS NOT NULL",
                (now,),
            ).rowcount
            events = 0
            if events_before is not None:
                old = (
                    "time < ? AND id NOT IN (SELECT event_id FROM labels)"
                    " AND id NOT IN (SELECT id FROM quarantine WHERE status = 'held')"
                )
                self._forget_text(tx, old, (events_before,))
                events = tx.execute(f"DELETE FROM events WHERE {old}", (events_before,)).rowcount
        return {"raw_messages": int(raw), "events": int(events)}

    # --- labels -----------------------------------------------------------------------

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
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO labels (event_id, label, source, author, note, time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry.event_id, entry.label, entry.source, entry.author, entry.note, entry.time),
            )
            tx.execute("UPDATE retained SET expires = NULL WHERE event_id = ?", (event_id,))
            self._keep(tx, event_id)
        return entry

    def withdraw_labels(self, event_id: str, author: str) -> int:
        """Withdraw every active label of an event (unlearn); returns how many."""
        with self.transaction() as tx:
            return int(tx.execute(
                "UPDATE labels SET withdrawn = ?, note = note || ? WHERE event_id = ?"
                " AND withdrawn IS NULL",
                (time.time(), f" [withdrawn by {author}]", validate_id(event_id)),
            ).rowcount)  # fmt: skip

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
            "SELECT l.event_id AS event_id, l.label AS label, l.source AS source,"
            " e.time AS time, r.raw AS raw, r.features AS features FROM labels l"
            " JOIN events e ON e.id = l.event_id LEFT JOIN retained r ON r.event_id = l.event_id"
            f" WHERE {LABEL_IN_FORCE} AND e.time >= ? AND e.time < ? ORDER BY e.time",
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

    # --- console users, sessions, single-use links --------------------------------------

    def add_user(self, name: str, password_hash: str, role: str) -> None:
        """Create or replace a console user (the hash comes from argon2, never a password).

        Replacing a user (a new password) ends every session they had.
        """
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO users (name, hash, role, created, disabled) VALUES (?, ?, ?, ?, 0)"
                " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, role = excluded.role,"
                " disabled = 0",
                (name, password_hash, role, time.time()),
            )
            tx.execute('DELETE FROM sessions WHERE "user" = ?', (name,))

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
        with self.transaction() as tx:
            if role is not None:
                tx.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            if disabled is not None:
                tx.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
                # Disabling ends every session; enabling again does not bring them back.
                tx.execute('DELETE FROM sessions WHERE "user" = ?', (name,))

    def start_session(self, user: str, seconds: float) -> str:
        """A new console session for ``user``; its id is the only thing the cookie holds."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            tx.execute(
                'INSERT INTO sessions (id, "user", created, expires) VALUES (?, ?, ?, ?)',
                (session_id, user, now, now + seconds),
            )
        return session_id

    def session_user(self, session_id: str) -> str | None:
        """The user of a live session, or None when it ended, expired or never was."""
        rows = self.query(
            'SELECT "user" AS name FROM sessions WHERE id = ? AND expires >= ?',
            (session_id, time.time()),
        )
        return str(rows[0]["name"]) if rows else None

    def end_session(self, session_id: str) -> None:
        """Log one session out, server-side (the cookie is worthless from now on)."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def use_link(self, token: str) -> bool:
        """Mark a single-use link used; False when it already was (a second click)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.transaction() as tx:
            return tx.execute(
                "INSERT INTO used_links (digest, time) VALUES (?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                (digest, time.time()),
            ).rowcount == 1  # fmt: skip

    # --- mailbox owners' allowed senders --------------------------------------------------

    def allow_sender(self, rcpt: str, sender: str, author: str) -> bool:
        """A mailbox owner's "always allow" of one sender; False when at MAX_ALLOWS already."""
        rcpt, sender = rcpt.lower(), sender.lower()
        with self.transaction() as tx:
            count = tx.execute(
                "SELECT count(*) AS n FROM sender_allows WHERE rcpt = ? AND sender != ?",
                (rcpt, sender),
            ).fetchone()["n"]
            if count >= MAX_ALLOWS:
                return False
            tx.execute(
                "INSERT INTO sender_allows (rcpt, sender, author, time) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (rcpt, sender) DO UPDATE SET author = excluded.author,"
                " time = excluded.time",
                (rcpt, sender, author, time.time()),
            )
        return True

    def forget_sender(self, rcpt: str, sender: str) -> None:
        """Take one sender off a recipient's allow list."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM sender_allows WHERE rcpt = ? AND sender = ?",
                       (rcpt.lower(), sender.lower()))  # fmt: skip

    def sender_allows(self, rcpt: str | None = None) -> dict[str, set[str]]:
        """Allowed senders by recipient: every recipient's, or one's."""
        sql = "SELECT rcpt, sender FROM sender_allows"
        rows = self.query(sql + " WHERE rcpt = ?", (rcpt.lower(),)) if rcpt else self.query(sql)
        allows: dict[str, set[str]] = {}
        for row in rows:
            allows.setdefault(row["rcpt"], set()).add(row["sender"])
        return allows

    # --- the quarantine index ----------------------------------------------------------

    def hold(self, row: QuarantineRow) -> None:
        """Index a held message; durable (its bytes are already on disk)."""
        with self.transaction(durable=True) as tx:
            tx.execute(
                "INSERT INTO quarantine (id, time, mail_from, rcpts, subject, score, reason,"
                " size, status, status_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.time, row.mail_from, json.dumps(list(row.rcpts)), row.subject,
                 row.score, row.reason, row.size, row.status, row.time),
            )  # fmt: skip
            self._keep(tx, row.id)  # if its event is already in (the gateway writes it after)

    def held(self, message_id: str) -> QuarantineRow:
        """One quarantine entry; UnknownIdError when there is none."""
        rows = self.query("SELECT * FROM quarantine WHERE id = ?", (validate_id(message_id),))
        if not rows:
            raise UnknownIdError(f"no quarantined message {message_id}")
        return _quarantine_row(rows[0])

    def quarantine_list(
        self, status: str | None, limit: int, search: str = "", recipient: str = ""
    ) -> list[QuarantineRow]:
        """Entries, newest first: by status, words found in sender, recipients, subject or
        reason (case-insensitive), and one recipient."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if recipient:  # the index keeps recipients as a JSON list: find the quoted element
            clauses.append("lower(rcpts) LIKE ? ESCAPE '\\'")
            params.append(f"%{_like(json.dumps(recipient.lower()))}%")
        for word in search.split()[:8]:
            pattern = f"%{_like(word.lower())}%"
            clauses.append(
                "(lower(mail_from) LIKE ? ESCAPE '\\' OR lower(rcpts) LIKE ? ESCAPE '\\'"
                " OR lower(subject) LIKE ? ESCAPE '\\' OR lower(reason) LIKE ? ESCAPE '\\')"
            )
            params.extend([pattern] * 4)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.query(
            f"SELECT * FROM quarantine {where} ORDER BY time DESC LIMIT ?",
            (*params, limit),
        )
        entries = [_quarantine_row(row) for row in rows]
        if recipient:
            entries = [e for e in entries if recipient.lower() in (r.lower() for r in e.rcpts)]
        return entries

    def set_held_status(self, message_id: str, status: str) -> None:
        """Mark a held message released or deleted."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE quarantine SET status = ?, status_time = ? WHERE id = ?",
                (status, time.time(), validate_id(message_id)),
            )

    # --- what the console, the daily report and rule replay read ---------------------------

    def verdicts_by_hour(self, since: float) -> dict[int, dict[str, int]]:
        """Message verdicts per whole hour after ``since``: {hour: {action: count}}."""
        per_hour: dict[int, dict[str, int]] = {}
        for row in self.query(
            f"SELECT {self._hour_since('time')} AS n, action, COUNT(*) AS c FROM events"
            " WHERE kind = 'message' AND time >= ? GROUP BY n, action",
            (since, since),
        ):
            per_hour.setdefault(int(row["n"]), {})[row["action"]] = int(row["c"])
        return per_hour

    def _top(self, sql: str, params: Sequence[Any]) -> list[tuple[str, int]]:
        return [(str(r["name"]), int(r["n"])) for r in self.query(sql, params)]

    def symbol_counts(self, since: float, limit: int = 1000) -> list[tuple[str, int]]:
        """Symbols (check findings and rules) by how many events had them, most first."""
        return self._top(
            "SELECT symbol AS name, COUNT(*) AS n FROM event_symbols WHERE time >= ?"
            " GROUP BY symbol ORDER BY n DESC, name LIMIT ?",
            (since, limit),
        )

    def top_senders(self, since: float, limit: int) -> list[tuple[str, int]]:
        """Envelope senders of message events by count."""
        return self._top(
            "SELECT mail_from AS name, COUNT(*) AS n FROM events WHERE kind = 'message'"
            " AND time >= ? AND mail_from != '' GROUP BY mail_from ORDER BY n DESC, name LIMIT ?",
            (since, limit),
        )

    def top_sender_domains(self, since: float, limit: int) -> list[tuple[str, int]]:
        """Envelope sender domains of message events by count."""
        return self._top(
            f"SELECT substr(mail_from, {self.instr}(mail_from, '@') + 1) AS name,"
            " COUNT(*) AS n FROM events WHERE kind = 'message' AND time >= ?"
            " AND mail_from LIKE '%@%' GROUP BY name ORDER BY n DESC, name LIMIT ?",
            (since, limit),
        )

    def failure_counts(self, since: float) -> list[tuple[str, int]]:
        """Check failures and temporary errors (AV_FAIL, *_ERROR, *_TEMPERROR) by count."""
        return self._top(
            "SELECT symbol AS name, COUNT(*) AS n FROM event_symbols WHERE time >= ? AND"
            " (symbol = 'AV_FAIL' OR symbol LIKE '%\\_TEMPERROR' ESCAPE '\\'"
            " OR symbol LIKE '%\\_ERROR' ESCAPE '\\') GROUP BY symbol ORDER BY n DESC, name",
            (since,),
        )

    def labels_against_actions(self, since: float) -> list[tuple[str, str, int]]:
        """(label in force, the action taken, count) for labelled events since ``since``."""
        rows = self.query(
            "SELECT l.label AS label, e.action AS action, COUNT(*) AS c FROM labels l"
            f" JOIN events e ON e.id = l.event_id WHERE {LABEL_IN_FORCE} AND e.time >= ?"
            " GROUP BY l.label, e.action",
            (since,),
        )
        return [(r["label"], r["action"], int(r["c"])) for r in rows]

    def symbol_hits_per_day(self, since: float) -> dict[str, dict[str, int]]:
        """{symbol: {YYYY-MM-DD: hits}} since ``since`` (UTC days)."""
        per_day: dict[str, dict[str, int]] = {}
        for r in self.query(
            f"SELECT symbol, {self._day('time')} AS day, COUNT(*) AS hits FROM event_symbols"
            " WHERE time >= ? GROUP BY symbol, day ORDER BY day",
            (since,),
        ):
            per_day.setdefault(r["symbol"], {})[r["day"]] = int(r["hits"])
        return per_day

    def symbol_hits_on_ham(self, since: float) -> dict[str, int]:
        """Symbols on events whose label in force is ham."""
        return dict(self._top(
            "SELECT es.symbol AS name, COUNT(*) AS n FROM event_symbols es"
            f" JOIN labels l ON l.event_id = es.event_id WHERE es.time >= ? AND l.label = 'ham'"
            f" AND {LABEL_IN_FORCE} GROUP BY es.symbol",
            (since,),
        ))  # fmt: skip

    def model_verdicts(self, since: float) -> dict[str, tuple[int, float]]:
        """ML_SPAM and ML_HAM since ``since``: {symbol: (count, mean score)}."""
        rows = self.query(
            "SELECT symbol, COUNT(*) AS n, AVG(score) AS s FROM event_symbols WHERE time >= ?"
            " AND symbol IN ('ML_SPAM', 'ML_HAM') GROUP BY symbol",
            (since,),
        )
        return {r["symbol"]: (int(r["n"]), float(r["s"] or 0.0)) for r in rows}

    # Last: a method named list would hide the builtin in the annotations below it.
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
            (f"{self.instr}(e.data, ?) > 0", _queue_id(where.queue_id)),
        ]
        clauses = [clause for clause, value in simple if value is not None]
        params: list[Any] = []
        for _, value in simple:
            if isinstance(value, tuple):
                params.extend(value)
            elif value is not None:
                params.append(value)
        if where.text:
            words = re.findall(r"\w+", where.text)[:10]
            if words:
                clause, param = self._text_match(words)
                clauses.append(clause)
                params.append(param)
        if where.label == "none":
            clauses.append("e.id NOT IN (SELECT event_id FROM labels WHERE withdrawn IS NULL)")
        elif where.label:
            clauses.append(
                f"e.id IN (SELECT l.event_id FROM labels l WHERE l.label = ? AND {LABEL_IN_FORCE})"
            )
            params.append(where.label)
        if where.before is not None:
            clauses.append("(e.time < ? OR (e.time = ? AND e.id < ?))")
            params.extend([where.before[0], where.before[0], where.before[1]])
        if where.symbol:
            # Walk the (symbol, time) index newest first instead of collecting every event
            # that ever had a common symbol: constant time for the first pages.
            sql = (
                "SELECT e.data AS data FROM event_symbols x JOIN events e ON e.id = x.event_id"
                " WHERE x.symbol = ?"
            )
            params.insert(0, where.symbol)
            order = " ORDER BY x.time DESC, x.event_id DESC LIMIT ?"
            sql += "".join(" AND " + c for c in clauses) + order
        else:
            sql = "SELECT e.data AS data FROM events e"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY e.time DESC, e.id DESC LIMIT ?"
        params.append(where.limit)
        return [SecurityEvent.from_dict(json.loads(r["data"])) for r in self.query(sql, params)]
