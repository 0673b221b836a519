"""DMARC (RFC 7489): policy discovery with the Public Suffix List, alignment, p/sp/pct."""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from gateway.clients.dns import DnsClient, DnsTempError

_POLICIES = ("none", "quarantine", "reject")
# RFC 7489 6.6.4: a message not sampled by pct gets the next milder policy.
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=8192)  # senders come back; the list lookup is 10 us a name
def organizational_domain(domain: str) -> str:
    """The registrable domain (RFC 7489 3.2) by the Public Suffix List shipped with the package."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """Strict: identical domains; relaxed: same organizational domain (RFC 7489 3.1)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a DMARC record that evaluation needs."""

    p: str
    sp: str
    pct: int
    adkim: str
    aspf: str


@lru_cache(maxsize=1024)  # a domain's record is the same text until it changes
def parse_record(text: str) -> DmarcRecord | None:
    """Parse 'v=DMARC1; p=...'; None when it is not a usable DMARC record."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        # RFC 7489 6.6.3: a record with a bad or missing p= but a rua= is treated as p=none.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        p=p,
        sp=sp if sp in _POLICIES else p,
        pct=pct,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
    )


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The outcome for one message, with everything an analyst asks about."""

    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str = "none"  # the policy to apply after pct sampling
    published_policy: str = "none"
    record_domain: str = ""
    pct: int = 100
    sampled: bool = True
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


class KnownPolicies:
    """The DMARC policy last seen for each From domain, kept past the record's TTL.

    When DNS fails, this is how the gateway knows that a domain enforces DMARC (p=reject or
    quarantine) and that mail claiming to come from it must be deferred, not waved through.
    Bounded (least recently seen out first) and forgotten after ``keep`` seconds.
    """

    def __init__(self, size: int = 10000, keep: float = 7 * 86400.0) -> None:
        self.size = size
        self.keep = keep
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, from_domain: str, policy: str) -> None:
        """Note the policy that applies to mail from ``from_domain``."""
        with self._lock:
            self._seen[from_domain] = (time.monotonic() + self.keep, policy)
            self._seen.move_to_end(from_domain)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def get(self, from_domain: str) -> str | None:
        """The policy last seen for the domain (or its organizational domain), if recent."""
        domain = from_domain.lower().rstrip(".")
        with self._lock:
            for name in (domain, organizational_domain(domain)):
                entry = self._seen.get(name)
                if entry is not None and entry[0] > time.monotonic():
                    return entry[1]
        return None


async def find_record(
    client: DnsClient, from_domain: str, known: KnownPolicies | None = None
) -> tuple[DmarcRecord | None, str]:
    """Look up _dmarc.<domain>, then _dmarc.<organizational domain> (RFC 7489 6.6.3)."""
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        texts = [t.decode("utf-8", "replace") for t in await client.txt(f"_dmarc.{domain}")]
        records = [t for t in texts if t.lower().startswith("v=dmarc1")]
        if len(records) == 1:
            record = parse_record(records[0])
            if record is not None:
                if known is not None:
                    known.remember(from_domain, record.p if domain == from_domain else record.sp)
                return record, domain
        # Several records, or an unusable one: as if none were published (RFC 7489 6.6.3).
    if known is not None:
        known.remember(from_domain, "none")
    return None, ""


async def evaluate(
    client: DnsClient,
    from_domains: Sequence[str],
    spf_result: str,
    spf_domain: str,
    dkim_pass_domains: Sequence[str],
    rng: random.Random | None = None,
    known: KnownPolicies | None = None,
    auth_temperror: bool = False,
) -> DmarcResult:
    """DMARC for the RFC5322.From domain, given the SPF and DKIM results.

    With ``auth_temperror`` (SPF or a DKIM key lookup failed temporarily) a message without
    an aligned pass is a temperror, not a fail: the pass may be what the failure hid.
    """
    domains = sorted({d.lower().rstrip(".") for d in from_domains if d})
    if len(domains) != 1:
        reason = "no From domain" if not domains else "several From domains"
        return DmarcResult("permerror", ",".join(domains), reason=reason)
    from_domain = domains[0]
    try:
        record, record_domain = await find_record(client, from_domain, known)
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain, reason=str(exc))
    if record is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    published = record.p if record_domain == from_domain else record.sp
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf)
    dkim_ok = any(aligned(d, from_domain, record.adkim) for d in dkim_pass_domains)
    base = DmarcResult(
        "pass",
        from_domain,
        policy="none",
        published_policy=published,
        record_domain=record_domain,
        pct=record.pct,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_ok,
    )
    if spf_ok or dkim_ok:
        return base
    if auth_temperror:
        reason = "no aligned pass, and SPF or DKIM had a DNS temperror"
        return replace(base, result="temperror", reason=reason)
    # pct sampling is a policy choice, not a secret: the stdlib generator is fine.
    sampled = record.pct >= 100 or (rng or random).random() * 100 < record.pct
    policy = published if sampled else _MILDER[published]
    return replace(base, result="fail", policy=policy, sampled=sampled, reason="no aligned pass")
