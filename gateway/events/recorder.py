"""Recording events: the store, the optional JSON lines file, and the events logger."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import StoreError
from gateway.events.schema import Retained, SecurityEvent

if TYPE_CHECKING:
    from gateway.store import Store

# Security events go to their own logger as JSON lines (not this module's name: operators
# route "gateway.events" to their log shipper).
event_log = logging.getLogger("gateway.events")


class JsonLinesSink:
    """Appends each event as one JSON line for log shippers (opened per write: rotation-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: SecurityEvent) -> None:
        """Append one line."""
        line = event.to_json()
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from exc


class EventRecorder:
    """Sends each event to the store, the optional JSON lines file and the events logger."""

    def __init__(self, store: Store, jsonl: JsonLinesSink | None = None) -> None:
        self.store = store
        self.jsonl = jsonl

    def record(self, event: SecurityEvent, retained: Retained | None = None) -> None:
        """Record one event; raise StoreError when the store could not keep it."""
        self.record_many([(event, retained)])

    def record_many(self, items: Sequence[tuple[SecurityEvent, Retained | None]]) -> None:
        """Record several events: log lines, JSON lines, then one store transaction."""
        try:
            self.announce(items)
        finally:
            self.store.add_many(items)

    def announce(self, items: Sequence[tuple[SecurityEvent, Retained | None]]) -> None:
        """The events log and the JSON lines file (StoreError if that file failed)."""
        for event, _ in items:
            if event_log.isEnabledFor(logging.INFO):
                event_log.info(event.to_json())
            if self.jsonl is not None:
                self.jsonl.write(event)
