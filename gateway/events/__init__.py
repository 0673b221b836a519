"""Security events: one per message decision (and per refused step), stored and logged.

- ``schema``: the event, its kinds and JSON shape, filters, labels, times;
- ``store``: the embedded SQLite store;
- ``recorder``: store + JSON lines + the ``gateway.events`` logger.
"""

from gateway.events.recorder import EventRecorder, JsonLinesSink, event_log
from gateway.events.schema import (
    EVENT_ID,
    LABELS,
    SCHEMA_VERSION,
    EventFilter,
    EventKind,
    Label,
    Retained,
    SecurityEvent,
    parse_time,
    validate_id,
)
from gateway.events.store import BUSY_TIMEOUT_MS, EventStore, SqliteStore

__all__ = [
    "BUSY_TIMEOUT_MS",
    "EVENT_ID",
    "LABELS",
    "SCHEMA_VERSION",
    "EventFilter",
    "EventKind",
    "EventRecorder",
    "EventStore",
    "JsonLinesSink",
    "Label",
    "Retained",
    "SecurityEvent",
    "SqliteStore",
    "event_log",
    "parse_time",
    "validate_id",
]
