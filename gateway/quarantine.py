"""Quarantine: message bytes fsync'd in a directory, indexed by the store, released on request."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from gateway.errors import StoreError, UnknownIdError
from gateway.events import validate_id
from gateway.relay import write_durably
from gateway.store import QuarantineRow, Store

# The index row of one quarantined message (kept by the store).
QuarantineEntry = QuarantineRow


class Quarantine:
    """Held messages: a file per message (named by its validated event id) and an index row."""

    def __init__(self, directory: Path, store: Store) -> None:
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
        """Store durably: the file fsync'd, then the index row committed durably."""
        path = self.path_of(event_id)
        try:
            write_durably(self.directory, path.name, message)
        except OSError as exc:
            raise StoreError(f"quarantine write failed: {exc.strerror}") from exc
        try:
            now = time.time()
            self.store.hold(QuarantineRow(event_id, now, mail_from, rcpts, subject, score, reason,
                                          len(message), "held"))  # fmt: skip
        except StoreError:
            with contextlib.suppress(OSError):  # not indexed means not held: leave no orphan
                path.unlink()
            raise

    def list(
        self, status: str | None = "held", limit: int = 100, search: str = "", recipient: str = ""
    ) -> list[QuarantineEntry]:
        """Entries, newest first; ``search``: words all found in sender, recipients, subject
        or reason (case-insensitive); ``recipient``: only messages held for that address."""
        return self.store.quarantine_list(status, limit, search, recipient)

    def get(self, message_id: str) -> QuarantineEntry:
        """One entry by id."""
        return self.store.held(message_id)

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
        self.store.set_held_status(message_id, status)
        self.path_of(message_id).unlink(missing_ok=True)
