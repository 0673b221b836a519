"""Clients the checks share, built once per process and kept across reloads.

A reload swaps rules, scores and model; it must not throw away the DNS cache, the DMARC
policies seen so far or the clamd client. ``Services`` hands a check the client for its
configuration, reusing the one it already has while that configuration is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth.dmarc import KnownPolicies
from gateway.clients.clamd import ClamdClient
from gateway.clients.dns import DnsClient
from gateway.config import ClamdConfig, DnsConfig, RedisConfig
from gateway.shared_state import SharedState


@dataclass
class Services:
    """The DNS resolver and its cache, the DMARC policies seen, the clamd client."""

    known_policies: KnownPolicies = field(default_factory=KnownPolicies)
    _dns: dict[str, DnsClient] = field(default_factory=dict)
    _clamd: dict[str, ClamdClient] = field(default_factory=dict)
    _shared: dict[str, SharedState] = field(default_factory=dict)

    def dns(self, config: DnsConfig) -> DnsClient:
        """The resolver for ``config``: the same object (and cache) while it is unchanged."""
        key = config.model_dump_json()
        if key not in self._dns:
            self._dns = {key: DnsClient(config)}  # a changed [dns] replaces the old one
        return self._dns[key]

    def clamd(self, config: ClamdConfig) -> ClamdClient:
        """The clamd client for ``config``, kept while it is unchanged."""
        key = config.model_dump_json()
        if key not in self._clamd:
            self._clamd = {
                key: ClamdClient(
                    config.address, config.timeout, config.max_concurrency, config.chunk_size
                )
            }
        return self._clamd[key]

    def shared(self, config: RedisConfig) -> SharedState:
        """The shared state (Redis, or this process's memory) for ``config``, kept while it
        is unchanged: rate limits, greylisting and the bulk check count in it."""
        key = config.model_dump_json()
        if key not in self._shared:
            self._shared = {key: SharedState(config)}
        return self._shared[key]
