"""Rate limits: messages per client address, envelope sender, authenticated user, recipient.

Token buckets in the shared state (gateway/shared_state.py): in memory on one node, in
Redis across nodes. Counted at MAIL (client address, sender and user: one token per
transaction) and at RCPT (one per recipient), by either front. Over a limit the step gets
``451 4.7.28`` (RFC 7372: mail flood detected): the client retries later, nothing is lost,
and the deferral is an event naming the limit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config import RateLimitConfig
from gateway.shared_state import SharedState
from gateway.types import Phase, SessionInfo


@dataclass(frozen=True, slots=True)
class Limited:
    """Which limit a step went over, and for whom."""

    kind: str  # client_ip, sender, user or recipient
    key: str


def in_networks(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """``ip`` in one of ``networks`` (False for an address that does not parse)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks if net.version == address.version)


class RateLimits:
    """The configured buckets, taken from at MAIL and RCPT."""

    def __init__(self, config: RateLimitConfig, state: SharedState) -> None:
        self.config = config
        self.state = state
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in config.exempt_networks]

    @property
    def enabled(self) -> bool:
        c = self.config
        return any(b is not None for b in (c.client_ip, c.sender, c.user, c.recipient))

    async def check(self, phase: Phase, info: SessionInfo) -> Limited | None:
        """Take this step's tokens; the first limit gone over, or None."""
        if phase is Phase.MAIL:
            client = "" if in_networks(info.client_ip, self.exempt) else info.client_ip
            asked = [("client_ip", client), ("sender", info.mail_from.lower()),
                     ("user", info.user)]  # fmt: skip
        elif phase is Phase.RCPT:
            asked = [("recipient", info.rcpt.lower())]
        else:
            return None
        for kind, key in asked:
            bucket = getattr(self.config, kind)
            if bucket is None or not key:
                continue
            if not await self.state.take(f"{kind}:{key}", bucket.per_minute / 60, bucket.burst):
                return Limited(kind, key)
        return None
