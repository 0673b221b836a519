"""The milter listener: one socket (TCP or unix), one MilterSession per MTA connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from gateway.config import MilterConfig
from gateway.listen import LISTEN_BACKLOG, listen_on
from gateway.message_service import MessageService
from gateway.milter.session import MilterSession
from gateway.service import Gateway

log = logging.getLogger(__name__)


def milter_socket(config: MilterConfig) -> socket.socket:
    """The listening socket, bound before workers are forked (shared, like the SMTP one)."""
    return listen_on(config.listen, "milter.listen", config.socket_mode)


class MilterServer:
    """Accepts MTA connections and serves each with a MilterSession; drains on stop."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.service = MessageService(gateway)
        self.server: asyncio.Server | None = None
        self.sessions: set[MilterSession] = set()
        self.path: Path | None = None

    async def start(self, sock: socket.socket | None = None) -> str:
        """Listen (on ``sock`` when the workers share one); return the address."""
        config = self.gateway.settings.milter
        if sock is None:
            sock = milter_socket(config)
        if sock.family == socket.AF_UNIX:
            self.server = await asyncio.start_unix_server(self._client, sock=sock)
            where = f"unix:{sock.getsockname()}"
        else:
            self.server = await asyncio.start_server(
                self._client, sock=sock, backlog=LISTEN_BACKLOG
            )
            host, port = sock.getsockname()[:2]
            where = f"{host}:{port}"
        log.info("milter listening on %s", where)
        return where

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        settings = self.gateway.settings
        session = MilterSession(
            reader, writer, self.service, settings.milter, settings.server.max_message_size
        )
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let messages being scanned finish within ``grace`` seconds."""
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while True:
                    if not any(s.busy for s in self.sessions):
                        break
                    await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.writer.close()
