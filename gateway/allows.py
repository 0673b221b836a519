"""Mailbox owners' "always allow" senders, as the gateway reads them for each message.

A recipient allows a sender from a digest link or their quarantine page (gateway.web). The
gateway holds every allow in memory and reloads them off the event loop at most every
``REFRESH`` seconds, so a new allow takes effect within that time in every worker and no
message waits on the store. The rule input ``user_allowed`` trusts an allow only when the
sender is proven (SPF pass, or an aligned DKIM or DMARC pass for the From address).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.snapshot import Snapshot
from gateway.store import Store

REFRESH = 30.0  # seconds an allow may take to reach the gateway


class SenderAllows:
    """Recipient -> allowed senders, a snapshot of the store refreshed in the background."""

    def __init__(self, store: Store, refresh: float = REFRESH) -> None:
        # A store that cannot be read at start: no allows yet, the first message tries again.
        fallback: dict[str, set[str]] = {}
        self.snapshot = Snapshot(store.sender_allows, refresh, "allowed senders", fallback)

    def common(self, rcpts: Iterable[str]) -> frozenset[str]:
        """The senders every one of ``rcpts`` allows (none when a recipient allows none)."""
        allows = self.snapshot.current()
        shared: set[str] | None = None
        for rcpt in rcpts:
            allowed = allows.get(rcpt.lower())
            if not allowed:
                return frozenset()
            shared = set(allowed) if shared is None else shared & allowed
        return frozenset(shared or ())
