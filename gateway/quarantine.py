"""Quarantine: message bytes fsync'd under the store, indexed in SQLite, released on request."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreError, UnknownIdError
from gateway.events import SqliteStore, validate_id
from gateway.relay import write_durably


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
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
        return {
            "id": self.id,
            "time": self.time,
            "mail_from": self.mail_from,
            "rcpts": list(self.rcpts),
            "subject": self.subject,
            "score": self.score,
            "reason": self.reason,
            "size": self.size,
            "status": self.status,
        }


class Quarantine:
    """Held messages: a file per message (named by its validated event id) and an index row."""

    def __init__(self, directory: Path, store: SqliteStore) -> None:
        self.directory = directory
        self.store = store

    def path_of(self, message_id: str) -> Path:
        """Where the bytes of a quarantined message live; the id is validated first."""
        return self.directory / f"{validate_id(message_id)}.eml"

    def hold(
        self,
        event_id: str,
        mail_from: str,
        rcpts: tuple[str, ...],
        subject: str,
        score: float | None,
        reason: str,
        message: bytes,
    ) -> None:
        """Store durably (file fsync'd, then the index row committed with synchronous=FULL)."""
        path = self.path_of(event_id)
        try:
            write_durably(self.directory, path.name, message)
        except OSError as exc:
            raise StoreError(f"quarantine write failed: {exc.strerror}") from exc
        try:
            with self.store.transaction(durable=True) as db:
                db.execute(
                    "INSERT INTO quarantine (id, time, mail_from, rcpts, subject, score, reason,"
                    " size, status, status_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'held', ?)",
                    (
                        event_id,
                        time.time(),
                        mail_from,
                        json.dumps(list(rcpts)),
                        subject,
                        score,
                        reason,
                        len(message),
                        time.time(),
                    ),
                )
        except StoreError:
            with contextlib.suppress(OSError):  # not indexed means not held: leave no orphan
                path.unlink()
            raise

    def list(
        self, status: str | None = "held", limit: int = 100, search: str = "", recipient: str = ""
    ) -> list[QuarantineEntry]:
        """Entries, newest first; ``search``: words all found in sender, recipients, subject
        or reason (case-insensitive); ``recipient``: only messages held for that address."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if recipient:  # the index keeps recipients as a JSON list: find the quoted element
            clauses.append("rcpts LIKE ? ESCAPE '\\'")
            params.append(f"%{_like(json.dumps(recipient))}%")
        for word in search.split()[:8]:
            pattern = f"%{_like(word)}%"
            clauses.append(
                "(mail_from LIKE ? ESCAPE '\\' OR rcpts LIKE ? ESCAPE '\\'"
                " OR subject LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\')"
            )
            params.extend([pattern] * 4)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.store.query(
            f"SELECT * FROM quarantine {where} ORDER BY time DESC LIMIT ?",  # noqa: S608 - fixed parts
            (*params, limit),
        )
        entries = [_entry(row) for row in rows]
        if recipient:
            entries = [e for e in entries if recipient.lower() in (r.lower() for r in e.rcpts)]
        return entries

    def get(self, message_id: str) -> QuarantineEntry:
        """One entry by id."""
        rows = self.store.query("SELECT * FROM quarantine WHERE id = ?", (validate_id(message_id),))
        if not rows:
            raise UnknownIdError(f"no quarantined message {message_id}")
        return _entry(rows[0])

    def read(self, message_id: str) -> bytes:
        """The held bytes."""
        entry = self.get(message_id)
        if entry.status != "held":
            raise UnknownIdError(f"message {message_id} is {entry.status}, not held")
        try:
            return self.path_of(message_id).read_bytes()
        except OSError as exc:
            raise StoreError(
                f"cannot read quarantined message {message_id}: {exc.strerror}"
            ) from exc

    def set_status(self, message_id: str, status: str) -> None:
        """Mark released or deleted; the file is removed once the index says so."""
        entry = self.get(message_id)
        if entry.status != "held":
            raise UnknownIdError(f"message {message_id} is {entry.status}, not held")
        with self.store.transaction() as db:
            db.execute(
                "UPDATE quarantine SET status = ?, status_time = ? WHERE id = ?",
                (status, time.time(), message_id),
            )
        self.path_of(message_id).unlink(missing_ok=True)


def _like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _entry(row: object) -> QuarantineEntry:
    r = dict(row)  # type: ignore[call-overload]
    return QuarantineEntry(
        id=r["id"],
        time=r["time"],
        mail_from=r["mail_from"],
        rcpts=tuple(json.loads(r["rcpts"])),
        subject=r["subject"],
        score=r["score"],
        reason=r["reason"],
        size=r["size"],
        status=r["status"],
    )
