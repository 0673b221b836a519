"""DNS through dnspython's async resolver: configured nameservers, timeouts, a bounded cache.

Every DNS question of the auth checks goes through one ``DnsClient``: DMARC asks it directly,
and pyspf and dkimpy (blocking libraries) ask it through ``DnsBridge`` from a worker thread,
which hands each query back to the event loop, or through ``CachedAnswers`` on the loop
itself, which answers from the cache alone. So there is one resolver, one cache and one set
of nameservers, never the system's by accident.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.config import DnsConfig, parse_hostport
from gateway.errors import TemporaryCheckError

T = TypeVar("T")
# How long "no such name" and "no such record" are remembered (RFC 2308 lets the zone's SOA
# minimum decide; a short fixed cap never keeps a new record unseen for long).
NEGATIVE_TTL = 30.0


class DnsTempError(TemporaryCheckError):
    """No usable answer now: timeout, SERVFAIL, refused, or no nameserver answered."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """Records of one type at one name; empty for NXDOMAIN and NODATA."""

    name: str
    rdtype: str
    records: tuple[Any, ...]
    nxdomain: bool = False


def txt_values(answer: DnsAnswer) -> list[bytes]:
    """Each TXT record with its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
    return [b"".join(record.strings) for record in answer.records]


class DnsClient:
    """An async resolver bound to the configured nameservers, with a bounded TTL cache."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_hostport(server, 53))
                for server in config.nameservers
            ]
        resolver.timeout = config.timeout
        resolver.lifetime = config.timeout
        self.resolver = resolver
        # The one cache: answers by (name, type) until their TTL runs out, bounded by
        # cache_size (least recently used out first). It is read without the loop, so a
        # worker thread (pyspf, dkimpy) gets a cached answer without a hand-off, and
        # without dnspython's per-query setup (name parsing, a resolution object).
        self._answers: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        # Failures (timeout, SERVFAIL, refused) remembered for failure_ttl seconds (RFC 2308
        # 7.1 allows up to five minutes): a domain whose DNS is down costs its next messages
        # no second wait. Bounded like the answers.
        self._failures: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str, rdtype: str) -> tuple[str, str]:
        return name.lower().rstrip("."), rdtype

    def cached(self, name: str, rdtype: str) -> DnsAnswer | None:
        """The answer still within its TTL, if any (safe from any thread).

        Raises DnsTempError when a recent failure for this question is remembered.
        """
        key = self._key(name, rdtype)
        with self._lock:
            failed = self._failures.get(key)
            if failed is not None:
                if failed[0] > time.monotonic():
                    raise DnsTempError(
                        f"{failed[1]} (remembered for {self.config.failure_ttl:g} s)"
                    )
                del self._failures[key]
            entry = self._answers.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._answers[key]
                return None
            self._answers.move_to_end(key)
            return entry[1]

    def _remember(self, answer: DnsAnswer, ttl: float) -> DnsAnswer:
        key = self._key(answer.name, answer.rdtype)
        with self._lock:
            self._answers[key] = (time.monotonic() + ttl, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.config.cache_size:
                self._answers.popitem(last=False)
        return answer

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Resolve; NXDOMAIN and NODATA are empty answers, failures raise DnsTempError."""
        hit = self.cached(name, rdtype)
        if hit is not None:
            return hit
        try:
            return await self._resolve(name, rdtype)
        except DnsTempError as exc:
            self._remember_failure(name, rdtype, str(exc))
            raise

    def _remember_failure(self, name: str, rdtype: str, reason: str) -> None:
        if self.config.failure_ttl <= 0:
            return
        key = self._key(name, rdtype)
        with self._lock:
            self._failures[key] = (time.monotonic() + self.config.failure_ttl, reason)
            self._failures.move_to_end(key)
            while len(self._failures) > self.config.cache_size:
                self._failures.popitem(last=False)

    async def _resolve(self, name: str, rdtype: str) -> DnsAnswer:
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return self._remember(DnsAnswer(name, rdtype, (), nxdomain=True), NEGATIVE_TTL)
        except dns.resolver.NoAnswer:
            return self._remember(DnsAnswer(name, rdtype, ()), NEGATIVE_TTL)
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"DNS timeout for {name}/{rdtype}") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"DNS failure for {name}/{rdtype}: no nameserver answered") from exc
        except (dns.exception.DNSException, ValueError) as exc:
            # Malformed names and answers are permanent for this name, but we cannot tell a
            # broken record from a broken network here: err on the side of a retry.
            raise DnsTempError(f"DNS error for {name}/{rdtype}: {exc}") from exc
        ttl = max(0.0, answer.expiration - time.time())
        return self._remember(DnsAnswer(name, rdtype, tuple(answer)), ttl)

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record at ``name`` with its strings joined."""
        return txt_values(await self.query(name, "TXT"))


class BlockingDns(Protocol):
    """What pyspf needs: a blocking query (DnsBridge, CachedAnswers)."""

    def query(self, name: str, rdtype: str) -> DnsAnswer: ...


class CachedAnswers:
    """Blocking DNS from the cache alone, for a first try on the event loop (nothing waits).

    A name not cached is a DnsTempError and sets ``missed``: the caller throws that try's
    result away and asks again through a DnsBridge in a worker thread. Most mail comes from
    senders seen within the TTL, and a thread hand-off costs more than evaluating their SPF.
    """

    def __init__(self, client: DnsClient) -> None:
        self.client = client
        self.missed = False

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        """The cached answer, or DnsTempError (and ``missed``) when there is none.

        A remembered failure is a DnsTempError too, but not a miss: asking again from a
        thread would only wait for the same failure.
        """
        hit = self.client.cached(name, rdtype)
        if hit is None:
            self.missed = True
            raise DnsTempError(f"{name}/{rdtype} is not cached")
        return hit


class DnsBridge:
    """Blocking DNS for worker threads (pyspf, dkimpy), answered by a DnsClient on the loop."""

    def __init__(self, client: DnsClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(self.client.config.timeout + 1.0)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DnsTempError("DNS bridge timeout") from exc

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Blocking form of DnsClient.query (a cached answer without a trip to the loop)."""
        hit = self.client.cached(name, rdtype)
        if hit is not None:
            return hit
        return self._wait(self.client.query(name, rdtype))

    def txt(self, name: str) -> list[bytes]:
        """Blocking form of DnsClient.txt."""
        return txt_values(self.query(name, "TXT"))
