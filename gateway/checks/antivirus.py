"""Antivirus: the raw message streamed to clamd (INSTREAM), which unpacks MIME and archives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pydantic import Field, field_validator

from gateway.checks.base import parse_section
from gateway.clients.clamd import ClamdClient, ClamdError, parse_address
from gateway.config import CheckConfig
from gateway.context import ScanContext
from gateway.types import Finding, Status


class AntivirusConfig(CheckConfig):
    """``[checks.antivirus]``."""

    address: str = "unix:var/clamav/clamd.sock"
    timeout: float = Field(default=30.0, gt=0)
    max_concurrency: int = Field(default=4, gt=0)
    chunk_size: int = Field(default=64 * 1024, ge=1024, le=1 << 22)
    # Match clamd's StreamMaxLength: a bigger message is not sent but follows on_error,
    # because clamd would only scan its beginning. Never silently passed unscanned.
    max_scan_size: int = Field(default=26 * 1024 * 1024, gt=0)

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        parse_address(value)
        return value


@dataclass(slots=True)
class AntivirusCheck:
    """VIRUS_FOUND with the signature, or AV_FAIL when the message could not be scanned."""

    name: ClassVar[str] = "antivirus"
    symbols: ClassVar[Mapping[str, str]] = {
        "VIRUS_FOUND": "ClamAV found malware (details: signature)",
        "AV_CLEAN": "ClamAV scanned the message and found nothing",
        "AV_FAIL": "The message could not be scanned (clamd down, timeout, error, too big)",
    }
    config: AntivirusConfig
    client: ClamdClient = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        # The client's own timeout stays inside the pipeline's outer one for this check.
        self.client = ClamdClient(
            cfg.address, cfg.timeout * 0.95, cfg.max_concurrency, cfg.chunk_size
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Self:
        return cls(parse_section(cls.name, AntivirusConfig, section))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        raw = ctx.envelope.raw
        if len(raw) > self.config.max_scan_size:
            return [self._fail(f"message of {len(raw)} bytes exceeds max_scan_size")]
        try:
            result = await self.client.scan(raw)
        except ClamdError as exc:
            return [self._fail(str(exc))]
        if result.infected:
            signature = result.signature
            return [
                Finding(
                    self.name,
                    "VIRUS_FOUND",
                    Status.FAIL,
                    {"signature": signature, "reply": f"Virus found: {signature}"},
                )
            ]
        return [Finding(self.name, "AV_CLEAN", Status.PASS)]

    def _fail(self, reason: str) -> Finding:
        return Finding(self.name, "AV_FAIL", Status.ERROR, {"error": reason[:300]})

    async def aclose(self) -> None:
        return None
