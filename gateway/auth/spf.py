"""SPF (RFC 7208) with pyspf, resolving through Mailmoat's DnsClient instead of the system.

pyspf looks names up through its module-level ``DNSLookup`` function. We install one
dispatcher that answers from the resolver set for the current call (a ContextVar, so
concurrent checks in different threads each use their own bridge).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import spf

from gateway.clients.dns import BlockingDns, DnsTempError

_bridge: contextvars.ContextVar[BlockingDns | None] = contextvars.ContextVar(
    "spf_bridge", default=None
)


def _lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30) -> list[Any]:
    """pyspf's DNSLookup contract: [((name, qtype), value), ...]; TempError on failure."""
    bridge = _bridge.get()
    if bridge is None:
        raise spf.TempError("DNS: no resolver configured for this SPF check")
    try:
        answer = bridge.query(name, "TXT" if qtype == "SPF" else qtype)
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    values: list[Any] = []
    for record in answer.records:
        if qtype in ("A", "AAAA"):
            values.append(((name, qtype), record.address))
        elif qtype == "MX":
            values.append(((name, qtype), (record.preference, record.exchange.to_text(True))))
        elif qtype == "PTR":
            values.append(((name, qtype), record.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            values.append(((name, qtype), record.strings))
    return values


spf.DNSLookup = _lookup


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The RFC 7208 result for one identity."""

    result: str  # pass fail softfail neutral none temperror permerror
    identity: str  # "mailfrom" or "helo"
    sender: str
    domain: str
    explanation: str


def check_spf(bridge: BlockingDns, ip: str, mail_from: str, helo: str, timeout: float) -> SpfResult:
    """Evaluate SPF for MAIL FROM, or for HELO when the reverse-path is null (RFC 7208 2.4).

    Blocking (pyspf): call it in a worker thread with a DnsBridge, or on the event loop with
    CachedAnswers (and again in a thread if that missed).
    """
    identity = "mailfrom" if mail_from else "helo"
    sender = mail_from or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower()
    token = _bridge.set(bridge)
    try:
        result, explanation = spf.check2(
            i=ip, s=sender, h=helo or domain, timeout=timeout, querytime=timeout
        )
    except (ValueError, UnicodeError) as exc:  # malformed IP or names from the client
        return SpfResult("permerror", identity, sender, domain, f"invalid input: {exc}"[:200])
    finally:
        _bridge.reset(token)
    return SpfResult(str(result).lower(), identity, sender, domain, str(explanation)[:300])
