"""The LMTP backend (RFC 2033): Dovecot, Cyrus and most stores take mail this way.

Like SMTP, but LHLO instead of EHLO, over TCP or a unix socket, and after the data one reply
per accepted recipient. The client is past DATA by then and hears one reply: the message is
accepted only if every recipient took it; if all refused it permanently, it is that 5xx;
otherwise it is a 451 for the whole message, so the sender retries and nothing is lost
(the recipients that took it may then get it twice: docs/deployment.md, "LMTP").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence

from gateway.config import LmtpBackendConfig
from gateway.errors import RelayError
from gateway.relay import Reply
from gateway.types import SessionInfo

MAX_REPLY_LINES = 100
MAX_LINE = 8192
_LINE_END = re.compile(rb"\r\n|\r|\n")


def dot_stuffed(message: bytes) -> bytes:
    """The data as sent: every line end CRLF (no bare CR or LF reaches the store, so no
    smuggled end of data), leading dots doubled, and the final CRLF.CRLF (RFC 5321 4.5.2)."""
    lines = _LINE_END.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


class LmtpBackend:
    """Deliver to an LMTP server at host:port, or at a unix socket ([backend] socket)."""

    def __init__(self, config: LmtpBackendConfig, local_hostname: str) -> None:
        self.config = config
        self.local_hostname = config.helo or local_hostname

    def session(self) -> LmtpSession:
        return LmtpSession(self)

    async def health(self) -> str | None:
        """None when the server greets; otherwise what is wrong (for /readyz)."""
        session = self.session()
        try:
            await session.connect()
        except RelayError as exc:
            return str(exc)
        finally:
            await session.close()
        return None

    @property
    def where(self) -> str:
        cfg = self.config
        return f"unix:{cfg.socket}" if cfg.socket else f"{cfg.host}:{cfg.port}"


class LmtpSession:
    """One connection, reused across the client's transactions; RSET between them."""

    def __init__(self, backend: LmtpBackend) -> None:
        self.backend = backend
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: set[str] = set()
        self.accepted: list[str] = []

    async def connect(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            return
        cfg = self.backend.config
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                if cfg.socket is not None:
                    self.reader, self.writer = await asyncio.open_unix_connection(cfg.socket)
                else:
                    self.reader, self.writer = await asyncio.open_connection(cfg.host, cfg.port)
        except (OSError, TimeoutError) as exc:
            raise RelayError(f"LMTP backend {self.backend.where}: {exc}") from exc
        greeting = await self._reply()
        if greeting.code != 220:
            await self.close()
            raise RelayError(f"LMTP backend {self.backend.where} greeted {greeting}")
        lhlo = await self._command(f"LHLO {self.backend.local_hostname}")
        if not lhlo.ok:
            await self.close()
            raise RelayError(f"LMTP backend refused LHLO: {lhlo}")
        self.extensions = {line.split()[0].upper() for line in lhlo.text.splitlines()[1:] if line}

    async def _reply(self) -> Reply:
        """One (multi-line) reply, bounded in lines and length."""
        if self.reader is None:
            raise RelayError("LMTP connection is closed")
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.backend.config.command_timeout):
                for _ in range(MAX_REPLY_LINES):
                    raw = await self.reader.readline()
                    if not raw.endswith(b"\n") or len(raw) > MAX_LINE:
                        raise RelayError(f"LMTP backend {self.backend.where}: broken reply")
                    line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                    if len(line) < 3 or not line[:3].isdigit():
                        raise RelayError(f"LMTP backend sent {line[:80]!r}")
                    lines.append(line[4:])
                    if line[3:4] != "-":
                        return Reply(int(line[:3]), "\n".join(lines))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise RelayError(f"LMTP backend {self.backend.where}: {exc!r}") from exc
        raise RelayError(
            f"LMTP backend {self.backend.where}: reply of over {MAX_REPLY_LINES} lines"
        )

    async def _command(self, line: str) -> Reply:
        if self.writer is None:
            raise RelayError("LMTP connection is closed")
        try:
            self.writer.write(line.encode("utf-8") + b"\r\n")
            await self.writer.drain()
        except OSError as exc:
            await self.close()
            raise RelayError(f"LMTP backend {self.backend.where}: {exc}") from exc
        reply = await self._reply()
        if reply.code == 421:
            await self.close()
            raise RelayError(f"LMTP backend closed the session: {reply}")
        return reply

    async def mail(
        self, sender: str, options: Sequence[str], client: SessionInfo | None = None
    ) -> Reply:
        await self.connect()
        self.accepted = []
        wanted = {opt.upper() for opt in options}
        params = ""
        if "BODY=8BITMIME" in wanted and "8BITMIME" in self.extensions:
            params += " BODY=8BITMIME"
        if "SMTPUTF8" in wanted:
            if "SMTPUTF8" not in self.extensions:
                return Reply(553, "5.6.7 The mail store does not support SMTPUTF8")
            params += " SMTPUTF8"
        return await self._command(f"MAIL FROM:<{sender}>{params}")

    async def rcpt(self, recipient: str) -> Reply:
        reply = await self._command(f"RCPT TO:<{recipient}>")
        if reply.ok:
            self.accepted.append(recipient)
        return reply

    async def data(self, message: bytes) -> Reply:
        """Send the data; one reply per accepted recipient, combined (see the module doc)."""
        start = await self._command("DATA")
        if start.code != 354:
            return start
        if self.writer is None:
            raise RelayError("LMTP connection is closed")
        try:
            self.writer.write(dot_stuffed(message))
            await self.writer.drain()
        except OSError as exc:
            await self.close()
            raise RelayError(f"LMTP backend {self.backend.where}: {exc}") from exc
        timeout = self.backend.config.data_timeout
        answers: dict[str, Reply] = {}
        for recipient in self.accepted:
            try:
                async with asyncio.timeout(timeout):
                    answers[recipient] = await self._reply()
            except TimeoutError as exc:
                await self.close()
                raise RelayError(f"LMTP backend gave no reply for {recipient}") from exc
        self.accepted = []
        return combine(answers)

    async def rset(self) -> None:
        self.accepted = []
        if self.writer is None or self.writer.is_closing():
            return
        try:
            await self._command("RSET")
        except RelayError:
            await self.close()

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is None:
            return
        with contextlib.suppress(OSError):
            if not writer.is_closing():
                writer.write(b"QUIT\r\n")
            writer.close()
            await writer.wait_closed()


def combine(answers: dict[str, Reply]) -> Reply:
    """One reply for the client from one per recipient (RFC 2033 4.2)."""
    if not answers:
        return Reply(554, "5.5.1 No valid recipients")
    said = "; ".join(f"<{rcpt}>: {reply}" for rcpt, reply in answers.items())
    if all(reply.ok for reply in answers.values()):
        return Reply(250, f"2.0.0 delivered to {len(answers)} recipient(s)")
    if all(reply.code >= 500 for reply in answers.values()):
        first = next(iter(answers.values()))
        return Reply(first.code, f"{first.text} ({said})"[:900])
    # Some took it, some did not (or not yet): the sender must retry the whole message.
    return Reply(451, f"4.3.0 Not every mailbox took the message, try again later ({said})"[:900])
