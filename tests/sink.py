"""A real SMTP sink (aiosmtpd on loopback) used as the gateway's backend in tests.

Recipients whose local part starts with ``unknown`` are refused with 550 5.1.1 and those
starting with ``busy`` with 450 4.2.1, so tests can see the backend's answer at RCPT time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    data_reply: str | None = None
    data_delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server, session, envelope, address, options):
        local = address.split("@")[0].lower()
        if local.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("busy"):
            return "450 4.2.1 Mailbox busy, try again"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        self.arrived.set()
        return "250 2.0.0 Ok: queued at sink"


class Sink:
    """A running sink: ``port``, ``handler.messages``; ``stop()`` closes the port."""

    def __init__(self, tls_context=None) -> None:
        self.tls_context = tls_context
        self.handler = SinkHandler()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.protocols: list[SMTP] = []

    def _protocol(self) -> SMTP:
        protocol = SMTP(
            self.handler,
            hostname="sink.test",
            enable_SMTPUTF8=True,
            tls_context=self.tls_context,
            data_size_limit=128 * 1024 * 1024,  # a mail store takes what the gateway passes
        )
        self.protocols.append(protocol)
        return protocol

    async def start(self, port: int = 0) -> Sink:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for protocol in self.protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()
            self.protocols.clear()
            await self.server.wait_closed()
            self.server = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.handler.arrived.clear()
                await self.handler.arrived.wait()
        return self.messages
