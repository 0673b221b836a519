"""Mailbox owners' "always allow" senders, as the gateway reads them for each message.

A recipient allows a sender from a digest link or their quarantine page (gateway.web). The
gateway holds every allow in memory and reloads them off the event loop at most every
``REFRESH`` seconds, so a new allow takes effect within that time in every worker and no
message waits on the store. The rule input ``user_allowed`` trusts an allow only when the
sender is proven (SPF pass, or an aligned DKIM or DMARC pass for the From address).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from gateway.errors import StoreError
from gateway.events import SqliteStore

log = logging.getLogger(__name__)

REFRESH = 30.0  # seconds an allow may take to reach the gateway


class SenderAllows:
    """Recipient -> allowed senders, a snapshot of the store refreshed in the background."""

    def __init__(self, store: SqliteStore, refresh: float = REFRESH) -> None:
        self.store = store
        self.refresh = refresh
        self.allows: dict[str, set[str]] = {}
        self.loaded = 0.0
        self.task: asyncio.Task[None] | None = None
        self.load()

    def load(self) -> None:
        """Read every allow (blocking); on a store failure keep the last snapshot."""
        try:
            self.allows = self.store.sender_allows()
        except StoreError as exc:
            log.warning("allowed senders not reloaded (%s); keeping the last ones", exc)
        self.loaded = time.monotonic()

    async def _reload(self) -> None:
        await asyncio.to_thread(self.load)

    def common(self, rcpts: Iterable[str]) -> frozenset[str]:
        """The senders every one of ``rcpts`` allows (none when a recipient allows none).

        Called on the event loop: answers from memory and starts a reload when stale.
        """
        if time.monotonic() - self.loaded > self.refresh and (
            self.task is None or self.task.done()
        ):
            self.task = asyncio.get_running_loop().create_task(self._reload())
        shared: set[str] | None = None
        for rcpt in rcpts:
            allowed = self.allows.get(rcpt.lower())
            if not allowed:
                return frozenset()
            shared = set(allowed) if shared is None else shared & allowed
        return frozenset(shared or ())
