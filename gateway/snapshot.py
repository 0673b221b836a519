"""A value read by a blocking loader and reloaded off the event loop when it grows old.

For lists the gateway consults on every message or recipient (mailbox owners' allowed
senders, the recipient map): answering from memory keeps the event loop free of file and
store reads, and a reload in a thread keeps a large list from stalling other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.errors import GatewayError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Snapshot(Generic[T]):
    """The loader's last good answer; a failed reload keeps it (and says so in the log)."""

    def __init__(
        self, load: Callable[[], T], refresh: float, what: str, fallback: T | None = None
    ) -> None:
        """Load now. A failure raises, unless there is a ``fallback`` to start from (and the
        next use then tries again)."""
        self.load = load
        self.refresh = refresh
        self.what = what
        self.task: asyncio.Task[None] | None = None
        self.loaded = time.monotonic()
        try:
            self.value = load()
        except GatewayError as exc:
            if fallback is None:
                raise
            log.warning("%s not loaded (%s); retrying on first use", what, exc)
            self.value, self.loaded = fallback, float("-inf")

    def reload(self) -> None:
        """Load again (blocking); on failure keep the last value."""
        try:
            self.value = self.load()
        except GatewayError as exc:
            log.warning("%s not reloaded (%s); keeping the last one", self.what, exc)
        self.loaded = time.monotonic()

    def current(self) -> T:
        """The value now, from memory; called on the event loop, starts a reload when stale."""
        if time.monotonic() - self.loaded > self.refresh and (
            self.task is None or self.task.done()
        ):
            self.task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.reload))
        return self.value
