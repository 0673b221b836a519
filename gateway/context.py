"""ScanContext: what a check sees of one message (envelope, parsed message, ids)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gateway.message import ParsedMessage
from gateway.ml.features import Extraction, Features, extract_all


def new_connection_id() -> str:
    """A short, time-ordered, unguessable id for one SMTP connection."""
    return f"{int(time.time()):08x}{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP transaction as the client presented it."""

    id: str
    raw: bytes
    mail_from: str
    rcpts: tuple[str, ...]
    client_ip: str = ""
    client_port: int = 0
    helo: str = ""
    tls: str = ""
    mail_options: tuple[str, ...] = ()
    user: str = ""  # the authenticated (SMTP AUTH) user, if any
    received_at: float = field(default_factory=time.time)

    @property
    def declared_8bitmime(self) -> bool:
        """The client sent BODY=8BITMIME (RFC 6152)."""
        return "BODY=8BITMIME" in (opt.upper() for opt in self.mail_options)

    @property
    def smtputf8(self) -> bool:
        """The client sent the SMTPUTF8 parameter (RFC 6531)."""
        return "SMTPUTF8" in (opt.upper() for opt in self.mail_options)


@dataclass(frozen=True)
class ScanContext:
    """An envelope and its message, parsed once on first use and shared by all checks."""

    envelope: Envelope
    # Header fields checks ask to add on delivery (e.g. Authentication-Results), in order.
    added_headers: list[tuple[str, str]] = field(default_factory=list)
    # Files the content check inspected (name, declared and true type, archive members),
    # for rules that test true types and archive members.
    inspected_files: list[dict[str, Any]] = field(default_factory=list)
    # Senders every recipient has "always allowed" from their quarantine (gateway.allows);
    # rules trust them only when proven (RuleInput.user_allowed).
    allowed_senders: set[str] = field(default_factory=set)

    @cached_property
    def message(self) -> ParsedMessage:
        """The parsed message (parsed once, on first use)."""
        return ParsedMessage.parse(self.envelope.raw)

    @cached_property
    def _extracted(self) -> Extraction:
        return extract_all(self.message)

    @property
    def features(self) -> Features:
        """Model features, computed once: used by the classifier and stored with the event."""
        return self._extracted.features

    @property
    def has_features(self) -> bool:
        """Whether the features were computed already (a check asked for them)."""
        return "_extracted" in self.__dict__

    @property
    def facts(self) -> dict[str, Any]:
        """URL, HTML and text facts (gateway.ml.facts), from the same pass as the features."""
        return self._extracted.facts

    @property
    def urls(self) -> list[str]:
        """The message's links and URLs (bounded), from the same pass: rules, reputation."""
        return self._extracted.urls
