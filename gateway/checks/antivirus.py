"""Antivirus: the raw message streamed to clamd (INSTREAM), which unpacks MIME and archives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import Field

from gateway.checks.base import parse_section
from gateway.clients.clamd import ClamdClient, ClamdError
from gateway.config import CheckConfig, ClamdConfig, Settings
from gateway.context import ScanContext
from gateway.services import Services
from gateway.types import Effect, Finding, Status


class AntivirusConfig(CheckConfig):
    """``[checks.antivirus]``: the check's switches; clamd itself is ``[antivirus]``."""

    # The pipeline's outer bound; clamd's own timeout ([antivirus] timeout) sits inside it.
    timeout: float = Field(default=35.0, gt=0)


@dataclass(slots=True)
class AntivirusCheck:
    """VIRUS_FOUND with the signature, or AV_FAIL when the message could not be scanned."""

    name: ClassVar[str] = "antivirus"
    waits_on_network: ClassVar[bool] = True  # started first (Pipeline.scan)
    symbols: ClassVar[Mapping[str, str]] = {
        "VIRUS_FOUND": "ClamAV found malware (details: signature)",
        "AV_CLEAN": "ClamAV scanned the message and found nothing",
        "AV_FAIL": "The message could not be scanned (clamd down, timeout, error, too big)",
    }
    config: AntivirusConfig
    clamd: ClamdConfig
    client: ClamdClient

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        config = parse_section(cls.name, AntivirusConfig, section)
        client = (services or Services()).clamd(settings.antivirus)
        return cls(config, settings.antivirus, client)

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        raw = ctx.envelope.raw
        if len(raw) > self.clamd.max_scan_size:
            return [self._fail(f"message of {len(raw)} bytes exceeds max_scan_size")]
        try:
            result = await self.client.scan(raw)
        except ClamdError as exc:
            return [self._fail(str(exc))]
        if not result.infected:
            return [Finding(self.name, "AV_CLEAN", Status.PASS)]
        reply = f"Virus found: {result.signature}"
        detail = {"signature": result.signature}
        return [Finding(self.name, "VIRUS_FOUND", Status.FAIL, detail, Effect(reply=reply))]

    def _fail(self, reason: str) -> Finding:
        return Finding(self.name, "AV_FAIL", Status.ERROR, {"error": reason[:300]})

    async def aclose(self) -> None:
        return None
