"""ARC (RFC 8617) chain validation with dkimpy, keys through Mailmoat's DnsClient."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dkim

from gateway.clients.dns import DnsBridge, DnsTempError


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status and who sealed last."""

    result: str  # pass fail none
    sealer: str = ""
    instances: int = 0
    reason: str = ""


def verify_arc(raw: bytes, bridge: DnsBridge, minkey: int) -> ArcResult:
    """Validate the ARC chain. Blocking (dkimpy): call it in a worker thread."""
    if b"arc-seal:" not in raw[:65536].lower():
        return ArcResult("none")

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = bridge.txt(text.rstrip("."))
        except DnsTempError:
            return None
        return records[0] if records else None

    logger = logging.Logger("dkimpy-arc", logging.ERROR)  # noqa: LOG001 - private
    try:
        cv, results, reason = dkim.arc_verify(raw, logger=logger, dnsfunc=dnsfunc, minkey=minkey)
    except (dkim.DKIMException, ValueError, IndexError) as exc:
        return ArcResult("fail", reason=str(exc)[:200])
    verdict = cv.decode() if isinstance(cv, bytes) else str(cv)
    sealer = ""
    if results:
        latest = max(results, key=lambda r: int(r.get("instance", 0)))
        raw_sealer = latest.get("as-domain", b"")
        sealer = raw_sealer.decode() if isinstance(raw_sealer, bytes) else str(raw_sealer)
    return ArcResult(verdict.lower(), sealer.lower(), len(results), str(reason)[:200])
