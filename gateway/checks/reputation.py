"""DNS block lists: the client address, and the domains of the sender and the links.

The signal every peer has (Spamhaus ZEN and DBL, SURBL, URIBL...): a listed client IP or
domain answers with an address in 127.0.0.0/8 (RFC 5782). Queries go through the project's
one resolver and cache ([dns]), at most ``max_queries`` a message, all at once. Answers that
mean "refused" or "over quota" (Spamhaus's 127.255.255.x, 127.0.1.255, SURBL's 127.0.0.1 on a
domain list) never count as listed, nor does anything outside 127/8 (a resolver that rewrites
NXDOMAIN). A list that does not answer is skipped: a block list is a score, never a reason to
defer mail. Private, loopback and documentation addresses are not sent to public lists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.dmarc import organizational_domain
from gateway.checks.base import parse_section
from gateway.clients.dns import DnsClient, DnsTempError
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.errors import NotConfigured
from gateway.ml.facts import is_ip_host, url_host
from gateway.services import Services
from gateway.types import Effect, Finding, Status

log = logging.getLogger(__name__)

# Answers that say the query was refused, not that the name is listed (Spamhaus: typing
# error, public resolver, excessive queries; DBL: IP queries refused).
REFUSALS = ("127.255.255.252", "127.255.255.254", "127.255.255.255", "127.0.1.255")


class BlockList(BaseModel):
    """One zone: ``codes`` maps the answers that count to what they mean (empty: any answer
    in 127/8 counts); ``score`` replaces the symbol's weight for a hit on this zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: str = Field(min_length=3)
    codes: dict[str, str] = Field(default_factory=dict)
    score: float | None = None


class ReputationConfig(CheckConfig):
    """``[checks.reputation]``: which lists to ask (none by default: they need the internet
    and most have terms of use)."""

    ip_zones: list[BlockList] = Field(default_factory=list)
    domain_zones: list[BlockList] = Field(default_factory=list)
    max_queries: Annotated[int, Field(ge=1, le=200)] = 20
    # More answers that mean "refused" for your lists (REFUSALS are always ignored).
    ignore: list[str] = Field(default_factory=list)
    # Look up private, loopback and documentation addresses too (tests, private lists).
    lookup_private: bool = False
    # A block list never defers mail: a failure of this check only loses its score.
    on_error: Literal["tempfail", "accept", "quarantine"] = "accept"


@dataclass(frozen=True, slots=True)
class Query:
    """One name to ask, and what a hit on it means."""

    symbol: str
    listed: str  # the address or domain looked up
    zone: BlockList
    name: str  # the DNS name asked


def reversed_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """1.2.3.4 -> 4.3.2.1; IPv6 in reversed nibbles (RFC 5782 2.4)."""
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


@dataclass(slots=True)
class ReputationCheck:
    """Looks up the client address and the message's domains in the configured lists."""

    name: ClassVar[str] = "reputation"
    waits_on_network: ClassVar[bool] = True  # started first (Pipeline.scan)
    symbols: ClassVar[Mapping[str, str]] = {
        "RBL_LISTED": "The client address is on an IP block list",
        "SENDER_DOMAIN_LISTED": "The envelope sender's or the From domain is on a domain list",
        "URIBL_LISTED": "A domain a link points to is on a domain list",
    }
    config: ReputationConfig
    dns: DnsClient

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        config = parse_section(cls.name, ReputationConfig, section)
        if not config.ip_zones and not config.domain_zones:
            raise NotConfigured("checks.reputation: no ip_zones or domain_zones configured")
        dns = (services or Services()).dns(settings.dns)
        return cls(config, dns)

    def queries(self, ctx: ScanContext) -> list[Query]:
        """What to ask, most telling first, bounded by max_queries."""
        cfg = self.config
        asked: list[Query] = []
        try:
            ip = ipaddress.ip_address(ctx.envelope.client_ip)
        except ValueError:
            ip = None
        if ip is not None and (cfg.lookup_private or ip.is_global):
            for zone in cfg.ip_zones:
                name = f"{reversed_ip(ip)}.{zone.zone}"
                asked.append(Query("RBL_LISTED", str(ip), zone, name))
        sender_domains = [ctx.envelope.mail_from.rpartition("@")[2]]
        sender_domains += [m.domain for m in ctx.message.from_mailboxes if m.domain]
        link_domains = []
        for url in ctx.urls:
            host = url_host(url)  # "" for a link it cannot parse (http://[x), not a crash
            if host and not is_ip_host(host):
                link_domains.append(host)
        seen: set[tuple[str, str]] = set()
        for symbol, domains in (("SENDER_DOMAIN_LISTED", sender_domains),
                                ("URIBL_LISTED", link_domains)):  # fmt: skip
            for domain in domains:
                registered = organizational_domain(domain.lower().rstrip("."))
                if not registered or "." not in registered:
                    continue
                for zone in cfg.domain_zones:
                    if (registered, zone.zone) in seen:
                        continue
                    seen.add((registered, zone.zone))
                    asked.append(Query(symbol, registered, zone, f"{registered}.{zone.zone}"))
        return asked[: cfg.max_queries]

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        asked = self.queries(ctx)
        answers = await asyncio.gather(*(self._ask(q) for q in asked))
        found = []
        for query, codes in zip(asked, answers, strict=True):
            for code in codes:
                meaning = query.zone.codes.get(code, "")
                effect = Effect(score=query.zone.score) if query.zone.score is not None else (
                    Effect())  # fmt: skip
                detail = {"zone": query.zone.zone, "listed": query.listed, "code": code}
                if meaning:
                    detail["meaning"] = meaning
                found.append(Finding(self.name, query.symbol, Status.FAIL, detail, effect))
                break  # one finding per list and name, whatever the number of codes
        return found

    async def _ask(self, query: Query) -> list[str]:
        """The answers that mean "listed" (none for NXDOMAIN, a refusal or a failure)."""
        try:
            answer = await self.dns.query(query.name, "A")
        except DnsTempError as exc:
            log.debug("%s: no answer (%s): not counted", query.name, exc)
            return []
        refused = {*REFUSALS, *self.config.ignore}
        if query.symbol != "RBL_LISTED":
            refused.add("127.0.0.1")  # SURBL and others: "access blocked"
        listed = []
        for record in answer.records:
            code = str(record)
            if code in refused or not code.startswith("127."):
                continue
            if query.zone.codes and code not in query.zone.codes:
                continue
            listed.append(code)
        return listed

    async def aclose(self) -> None:
        """The resolver is shared: nothing of its own to close."""
