"""Header sanity: the RFC 5322 fields every honest message has, and their syntax."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from gateway.checks.base import parse_section
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.message import iter_header_fields
from gateway.services import Services
from gateway.types import Finding, Status

# RFC 5322 3.6: these fields may occur at most once.
_SINGLETONS = ("From", "Sender", "Date", "Subject", "Message-ID", "To", "Reply-To", "Cc")
_ADDR_SPEC = re.compile(r"^[^\s@<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_MSG_ID = re.compile(r"^\s*<[^<>\s@]+@[^<>\s@]+>\s*$")


class HeadersConfig(CheckConfig):
    """No keys beyond the common ones."""


@dataclass(slots=True)
class HeadersCheck:
    """Flags missing, duplicated and malformed header fields."""

    name: ClassVar[str] = "headers"
    symbols: ClassVar[Mapping[str, str]] = {
        "HDR_MISSING_FROM": "No From header (RFC 5322 3.6 requires one)",
        "HDR_FROM_MALFORMED": "From header has no valid address",
        "HDR_MISSING_DATE": "No Date header (RFC 5322 3.6 requires one)",
        "HDR_DATE_MALFORMED": "Date header does not parse (RFC 5322 3.3)",
        "HDR_MISSING_MESSAGE_ID": "No Message-ID header",
        "HDR_MESSAGE_ID_MALFORMED": "Message-ID is not <left@right>",
        "HDR_DUPLICATE": "A field that may occur once occurs more than once",
        "HDR_MALFORMED_LINE": "A line in the header block is neither a field nor a continuation",
        "HDR_8BIT_UNENCODED": "Raw 8-bit bytes in headers without SMTPUTF8",
        "MIME_MALFORMED": "The MIME structure has defects (broken boundaries, bad headers)",
    }
    config: CheckConfig

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        return cls(parse_section(cls.name, HeadersConfig, section))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        msg = ctx.message
        found: list[Finding] = []

        def hit(symbol: str, **detail: Any) -> None:
            found.append(Finding(self.name, symbol, Status.FAIL, detail))

        froms = msg.headers("From")
        if not froms:
            hit("HDR_MISSING_FROM")
        elif not any(_ADDR_SPEC.match(m.address) for m in msg.from_mailboxes):
            hit("HDR_FROM_MALFORMED", value=froms[0][:200])

        date = msg.header("Date")
        if date is None:
            hit("HDR_MISSING_DATE")
        elif _parse_date(date) is None:
            hit("HDR_DATE_MALFORMED", value=date[:200])

        message_id = msg.header("Message-ID")
        if message_id is None:
            hit("HDR_MISSING_MESSAGE_ID")
        elif not _MSG_ID.match(message_id):
            hit("HDR_MESSAGE_ID_MALFORMED", value=message_id[:200])

        duplicated = [name for name in _SINGLETONS if len(msg.headers(name)) > 1]
        if duplicated:
            hit("HDR_DUPLICATE", fields=duplicated)

        malformed = [
            text[:100].decode("ascii", "replace")
            for name, text in iter_header_fields(msg.header_block)
            if name is None
        ]
        if malformed:
            hit("HDR_MALFORMED_LINE", count=len(malformed), first=malformed[0])

        if not ctx.envelope.smtputf8 and not msg.header_block.isascii():
            hit("HDR_8BIT_UNENCODED")

        if msg.defects:
            hit("MIME_MALFORMED", defects=sorted(set(msg.defects))[:10])
        return found

    async def aclose(self) -> None:
        return None


def _parse_date(value: str) -> object | None:
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
