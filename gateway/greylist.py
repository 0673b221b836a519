"""Greylisting: a first message from an unknown (client network, sender, recipient) is deferred.

Real MTAs retry after a few minutes; much bulk spam software never does. The triplet (the
client's /24 or /64, so a sender's pool of outbound servers counts as one) is remembered in
the shared state (gateway/shared_state.py): a retry after ``delay`` passes, and the triplet
then passes for ``pass_days`` (each pass renews it). It is decided once the message is in,
so that senders who prove who they are (an aligned DKIM signature or a DMARC pass), clients
in ``exempt_networks`` and authenticated clients are never delayed; a message the policy
rejects is rejected at once. A message with several recipients waits for its slowest one.
"""

from __future__ import annotations

import hashlib
import ipaddress

from gateway.config import GreylistConfig
from gateway.context import ScanContext
from gateway.policy.rule_input import RuleInput
from gateway.ratelimit import in_networks
from gateway.shared_state import SharedState
from gateway.types import Action, Finding, Verdict

# What is worth delaying: a message the policy refuses is refused at once.
DELAYED = frozenset({Action.ACCEPT, Action.TAG, Action.QUARANTINE})


class Greylist:
    """The configured greylisting, on the shared state."""

    def __init__(self, config: GreylistConfig, state: SharedState) -> None:
        self.config = config
        self.state = state
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in config.exempt_networks]

    def client_network(self, ip: str) -> str:
        """The client's network as greylisting counts it (the address itself if odd)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        prefix = self.config.ipv4_prefix if address.version == 4 else self.config.ipv6_prefix
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    def exempted(self, ctx: ScanContext, verdict: Verdict) -> bool:
        env = ctx.envelope
        if env.user or in_networks(env.client_ip, self.exempt):
            return True
        findings = [Finding(s.check, s.name, s.status, s.details) for s in verdict.symbols]
        return bool(RuleInput(ctx, findings).verified_from)

    async def wait(self, ctx: ScanContext, verdict: Verdict) -> int:
        """Seconds this message must still wait (0: it passes)."""
        if not self.config.enabled or verdict.action not in DELAYED or self.exempted(ctx, verdict):
            return 0
        env = ctx.envelope
        network = self.client_network(env.client_ip)
        waits = []
        for rcpt in env.rcpts:
            triplet = f"{network}\0{env.mail_from.lower()}\0{rcpt.lower()}"
            key = hashlib.blake2b(triplet.encode(), digest_size=16).hexdigest()
            waits.append(await self.state.greylist(
                key, self.config.delay, self.config.retry_hours * 3600,
                self.config.pass_days * 86400,
            ))  # fmt: skip
        return max(waits, default=0)
