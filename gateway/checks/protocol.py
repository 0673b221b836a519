"""Protocol sanity: what the SMTP transaction itself says about the sender's software."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from gateway.checks.base import parse_section
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.message import bare_line_endings
from gateway.services import Services
from gateway.types import Finding, Status


class ProtocolConfig(CheckConfig):
    """No keys beyond the common ones."""


@dataclass(slots=True)
class ProtocolCheck:
    """Flags bare line endings (the stuff of SMTP smuggling), NUL bytes and undeclared 8-bit."""

    name: ClassVar[str] = "protocol"
    symbols: ClassVar[Mapping[str, str]] = {
        "PROTO_BARE_LF": "A line ends in LF without CR (RFC 5321 2.3.8), as smuggling does",
        "PROTO_BARE_CR": "A CR not followed by LF (RFC 5321 2.3.8); smuggling attempts do this",
        "PROTO_NUL": "NUL bytes in the message data",
        "PROTO_8BIT_UNDECLARED": "8-bit data without BODY=8BITMIME or SMTPUTF8 (RFC 6152)",
        "PROTO_EMPTY_SENDER": "Null reverse-path (a bounce); legitimate, noted for rules",
    }
    config: CheckConfig

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        return cls(parse_section(cls.name, ProtocolConfig, section))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        raw = ctx.envelope.raw
        found: list[Finding] = []
        lf, cr = bare_line_endings(raw)
        if lf:
            found.append(Finding(self.name, "PROTO_BARE_LF", Status.FAIL, {"count": lf}))
        if cr:
            found.append(Finding(self.name, "PROTO_BARE_CR", Status.FAIL, {"count": cr}))
        if b"\x00" in raw:
            found.append(Finding(self.name, "PROTO_NUL", Status.FAIL, {"count": raw.count(0)}))
        declared = ctx.envelope.declared_8bitmime or ctx.envelope.smtputf8
        if not declared and not raw.isascii():
            found.append(Finding(self.name, "PROTO_8BIT_UNDECLARED", Status.FAIL))
        if not ctx.envelope.mail_from:
            found.append(Finding(self.name, "PROTO_EMPTY_SENDER", Status.NEUTRAL))
        return found

    async def aclose(self) -> None:
        return None
