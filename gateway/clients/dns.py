"""DNS through dnspython's async resolver: configured nameservers, timeouts, a bounded cache.

Every DNS question of the auth checks goes through one ``DnsClient``: DMARC asks it directly,
and pyspf and dkimpy (blocking libraries, run in worker threads) ask it through
``DnsBridge``, which hands each query back to the event loop. So there is one resolver, one
cache and one set of nameservers, never the system's by accident.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.config import DnsConfig, parse_hostport
from gateway.errors import TemporaryCheckError

T = TypeVar("T")


class DnsTempError(TemporaryCheckError):
    """No usable answer now: timeout, SERVFAIL, refused, or no nameserver answered."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """Records of one type at one name; empty for NXDOMAIN and NODATA."""

    name: str
    rdtype: str
    records: tuple[Any, ...]
    nxdomain: bool = False


class DnsClient:
    """An async resolver bound to the configured nameservers, with dnspython's LRU cache."""

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
        resolver.cache = dns.resolver.LRUCache(config.cache_size)
        self.resolver = resolver

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Resolve; NXDOMAIN and NODATA are empty answers, failures raise DnsTempError."""
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer(name, rdtype, (), nxdomain=True)
        except dns.resolver.NoAnswer:
            return DnsAnswer(name, rdtype, ())
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"DNS timeout for {name}/{rdtype}") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"DNS failure for {name}/{rdtype}: no nameserver answered") from exc
        except (dns.exception.DNSException, ValueError) as exc:
            # Malformed names and answers are permanent for this name, but we cannot tell a
            # broken record from a broken network here: err on the side of a retry.
            raise DnsTempError(f"DNS error for {name}/{rdtype}: {exc}") from exc
        return DnsAnswer(name, rdtype, tuple(answer))

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record at ``name`` with its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        answer = await self.query(name, "TXT")
        return [b"".join(record.strings) for record in answer.records]


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
        """Blocking form of DnsClient.query."""
        return self._wait(self.client.query(name, rdtype))

    def txt(self, name: str) -> list[bytes]:
        """Blocking form of DnsClient.txt."""
        return self._wait(self.client.txt(name))
