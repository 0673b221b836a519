"""Security events: one per message decision (and per refused step), stored and logged.

- ``schema``: the event, its kinds and JSON shape, filters, labels, times;
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

__all__ = [
    "EVENT_ID",
    "LABELS",
    "SCHEMA_VERSION",
    "EventFilter",
    "EventKind",
    "EventRecorder",
    "JsonLinesSink",
    "Label",
    "Retained",
    "SecurityEvent",
    "event_log",
    "parse_time",
    "validate_id",
]
