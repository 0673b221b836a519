"""Backends: an SMTP session mirrored step by step (before-queue), or local maildir delivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from gateway.config import BackendConfig, MaildirBackendConfig, SmtpBackendConfig
from gateway.errors import RelayError
from gateway.types import SessionInfo

log = logging.getLogger(__name__)

_SAFE_MAILBOX = re.compile(r"[^a-z0-9._+@-]")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply from the backend."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """A 2xx reply."""
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class BackendSession(Protocol):
    """One transaction stream to the backend; RelayError means 'unreachable or lost'.

    ``client`` at MAIL is who connected to us, for a backend that can be told (XFORWARD).
    """

    async def mail(
        self, sender: str, options: Sequence[str], client: SessionInfo | None = None
    ) -> Reply: ...
    async def rcpt(self, recipient: str) -> Reply: ...
    async def data(self, message: bytes) -> Reply: ...
    async def rset(self) -> None: ...
    async def close(self) -> None: ...


class Backend(Protocol):
    """A factory of backend sessions, and whether the backend can take mail now."""

    def session(self) -> BackendSession: ...
    async def health(self) -> str | None:
        """None when it can take mail; what is wrong otherwise (for /readyz)."""
        ...


# --- SMTP -----------------------------------------------------------------------------


class SmtpBackend:
    """Relay to an SMTP server (Postfix, Dovecot, Exchange...) with aiosmtplib."""

    def __init__(self, config: SmtpBackendConfig, local_hostname: str) -> None:
        self.config = config
        self.local_hostname = config.helo or local_hostname

    def session(self) -> SmtpBackendSession:
        return SmtpBackendSession(self)

    async def health(self) -> str | None:
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                _, writer = await asyncio.open_connection(cfg.host, cfg.port)
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            return f"{cfg.host}:{cfg.port}: {exc!r}"
        return None


class SmtpBackendSession:
    """A backend connection, opened at the first MAIL and reused for the client's session."""

    def __init__(self, backend: SmtpBackend) -> None:
        self.backend = backend
        self.client: aiosmtplib.SMTP | None = None
        self.encoding = "ascii"
        self.forwarded_client = False  # XCLIENT sent on this connection

    async def _connect(self) -> aiosmtplib.SMTP:
        if self.client is not None and self.client.is_connected:
            return self.client
        cfg = self.backend.config
        tls_context: ssl.SSLContext | None = None
        if cfg.starttls:
            tls_context = ssl.create_default_context()
            if not cfg.verify_tls:
                # Operator's explicit choice for a backend with a self-signed certificate.
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            local_hostname=self.backend.local_hostname,
            timeout=cfg.connect_timeout,
            start_tls=cfg.starttls,
            tls_context=tls_context,
        )
        try:
            await client.connect()
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise RelayError(f"backend {cfg.host}:{cfg.port}: {exc}") from exc
        self.client = client
        self.forwarded_client = False
        return client

    async def _call(self, name: str, call: Awaitable[aiosmtplib.SMTPResponse]) -> Reply:
        """Await one command; error replies are returned to be mirrored, failures raised."""
        try:
            response = await call
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or exc.code < 0:
                # The backend is closing the session: a temporary failure, not a verdict.
                await self.close()
                raise RelayError(f"backend closed the session: {exc.code} {exc.message}") from exc
            return Reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            raise RelayError(f"backend {name} failed: {exc!r}") from exc
        return Reply(response.code, response.message)

    def _connected(self) -> aiosmtplib.SMTP:
        if self.client is None or not self.client.is_connected:
            raise RelayError("backend connection is closed")
        return self.client

    async def mail(
        self, sender: str, options: Sequence[str], client_info: SessionInfo | None = None
    ) -> Reply:
        client = await self._connect()
        if client_info is not None:
            refused = await self._forward_client(client, client_info)
            if refused is not None:
                return refused
            client = self._connected()
        forwarded: list[str] = []
        wanted = {opt.upper() for opt in options}
        if "BODY=8BITMIME" in wanted and client.supports_extension("8BITMIME"):
            forwarded.append("BODY=8BITMIME")
        if "SMTPUTF8" in wanted:
            if not client.supports_extension("SMTPUTF8"):
                return Reply(553, "5.6.7 The mail store does not support SMTPUTF8")
            forwarded.append("SMTPUTF8")
        self.encoding = "utf-8" if "SMTPUTF8" in forwarded else "ascii"
        timeout = self.backend.config.command_timeout
        return await self._call(
            "MAIL", client.mail(sender, options=forwarded, encoding=self.encoding, timeout=timeout)
        )

    async def _forward_client(self, client: aiosmtplib.SMTP, info: SessionInfo) -> Reply | None:
        """XFORWARD (each transaction) or XCLIENT (once a connection), where offered.

        Postfix then logs, checks and stamps the real client, not us (its XFORWARD_README
        and XCLIENT_README). A refusal is returned as the reply to MAIL.
        """
        mode = self.backend.config.forward_client
        if mode == "off" or not client.supports_extension(mode):
            return None
        if mode == "xclient" and self.forwarded_client:
            return None  # XCLIENT lasts for the connection
        offered = set(client.esmtp_extensions.get(mode, "").upper().split())
        values = forward_attributes(info, xclient=mode == "xclient")
        pairs = [f"{name}={xtext(value)}" for name, value in values.items() if name in offered]
        timeout = self.backend.config.command_timeout
        # Lines under 512 octets (RFC 5321 4.5.3.1.4): a few attributes per command.
        for start in range(0, len(pairs), 3):
            command = client.execute_command(
                mode.upper().encode(), *(p.encode() for p in pairs[start : start + 3]),
                timeout=timeout,
            )  # fmt: skip
            reply = await self._call(mode.upper(), command)
            if mode == "xclient" and reply.code == 220:
                # XCLIENT starts the session again and the client greets anew: with the real
                # client's HELO name, or that EHLO would replace the one just forwarded.
                helo = info.helo or self.backend.local_hostname
                await self._call("EHLO", client.ehlo(hostname=helo, timeout=timeout))
                continue
            if not reply.ok:
                return Reply(reply.code, reply.text)
        self.forwarded_client = True
        return None

    async def rcpt(self, recipient: str) -> Reply:
        client = self._connected()
        timeout = self.backend.config.command_timeout
        return await self._call(
            "RCPT", client.rcpt(recipient, encoding=self.encoding, timeout=timeout)
        )

    async def data(self, message: bytes) -> Reply:
        # aiosmtplib turns every bare CR and bare LF into CRLF and dot-stuffs lines, so a
        # smuggled "\n.\n" can never end the data early at the backend (RFC 5321 4.5.2).
        client = self._connected()
        timeout = self.backend.config.data_timeout
        return await self._call("DATA", client.data(message, timeout=timeout))

    async def rset(self) -> None:
        if self.client is None or not self.client.is_connected:
            return
        try:
            await self.client.rset(timeout=self.backend.config.command_timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            # A session we cannot reset is not reused: the next MAIL reconnects.
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if client.is_connected:
            try:
                await client.quit(timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        else:
            client.close()


def xtext(value: str) -> str:
    """RFC 3461 4 xtext: '+', '=' and anything outside '!'..'~' as +HH (UTF-8 bytes)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        out.append(char if 33 <= byte <= 126 and char not in "+=" else f"+{byte:02X}")
    return "".join(out)


def forward_attributes(info: SessionInfo, xclient: bool = False) -> dict[str, str]:
    """The client as XFORWARD/XCLIENT attributes ([UNAVAILABLE] for what we do not know)."""
    unknown = "[UNAVAILABLE]"
    attributes = {
        "NAME": info.client_name or unknown,
        "ADDR": info.client_ip or unknown,
        "PORT": str(info.client_port) if info.client_port else unknown,
        "PROTO": "ESMTP" if info.protocol.startswith("ESMTP") else "SMTP",
        "HELO": info.helo or unknown,
    }
    if not xclient:
        attributes["IDENT"] = info.session_id or unknown
        attributes["SOURCE"] = "REMOTE"
    return attributes


# --- Maildir --------------------------------------------------------------------------


def mailbox_dirname(recipient: str) -> str:
    """A safe directory name for a recipient: lower-cased, no separators, no leading dot."""
    name = _SAFE_MAILBOX.sub("_", recipient.lower())[:200]
    return "_" + name[1:] if name.startswith(".") else name or "_"


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX needs the directory fsync'd)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path, *chunks: bytes) -> Path:
    """Write ``chunks`` to ``tmp``, fsync, rename to ``final``, fsync ``final``'s directory.

    On any failure the temporary file is removed: a half-written file keeps a full disk full.
    """
    try:
        with tmp.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.rename(final)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(final.parent)
    return final


def write_durably(directory: Path, name: str, data: bytes) -> Path:
    """Write via a temporary file, fsync it, rename into place, fsync the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    return _publish(directory / f".{name}.tmp", directory / name, data)


def maildir_deliver(root: Path, recipient: str, message: bytes) -> Path:
    """Deliver one copy into ``root/<recipient>/new`` following the Maildir protocol."""
    box = root / mailbox_dirname(recipient)
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    unique = f"{time.time():.6f}.M{os.getpid()}P{os.urandom(6).hex()}.{socket.gethostname()}"
    return _publish(
        box / "tmp" / unique,
        box / "new" / unique,
        b"Delivered-To: " + recipient.encode("utf-8", "replace") + b"\n",
        message.replace(b"\r\n", b"\n"),
    )


class MaildirBackend:
    """Local delivery into maildirs under one path, fsync'd before the client hears 250."""

    def __init__(self, config: MaildirBackendConfig) -> None:
        self.root = config.path

    def session(self) -> MaildirSession:
        return MaildirSession(self.root)

    async def health(self) -> str | None:
        root = self.root
        if not os.access(root if root.exists() else root.parent, os.W_OK):
            return f"{root} is not writable"
        return None


class MaildirSession:
    """A maildir 'session': collects recipients, writes one copy per recipient on DATA."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recipients: list[str] = []

    async def mail(
        self, sender: str, options: Sequence[str], client: SessionInfo | None = None
    ) -> Reply:
        self.recipients = []
        return Reply(250, "2.1.0 OK")

    async def rcpt(self, recipient: str) -> Reply:
        self.recipients.append(recipient)
        return Reply(250, "2.1.5 OK")

    async def data(self, message: bytes) -> Reply:
        delivered: list[Path] = []
        try:
            for recipient in self.recipients:
                delivered.append(
                    await asyncio.to_thread(maildir_deliver, self.root, recipient, message)
                )
        except OSError as exc:
            log.error("maildir delivery under %s failed: %s", self.root, exc)
            # All or nothing: the sender retries the whole message, so no copy may stay.
            for path in delivered:
                with contextlib.suppress(OSError):
                    path.unlink()
            # A full or read-only disk is our store failing, not a lost connection: 4.3.0.
            return Reply(451, f"4.3.0 Could not store the message: {exc.strerror or exc}")
        finally:
            self.recipients = []
        return Reply(250, "2.0.0 delivered to maildir")

    async def rset(self) -> None:
        self.recipients = []

    async def close(self) -> None:
        self.recipients = []


def make_backend(config: BackendConfig, local_hostname: str) -> Backend:
    """The backend named by ``[backend] kind``: one factory per kind, here and nowhere else."""
    from gateway.lmtp import LmtpBackend  # it builds on this module's Reply

    if isinstance(config, SmtpBackendConfig):
        return SmtpBackend(config, local_hostname)
    if isinstance(config, MaildirBackendConfig):
        return MaildirBackend(config)
    return LmtpBackend(config, local_hostname)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a delivery in a fresh session came to: the final reply, and who was refused."""

    reply: Reply
    refused: dict[str, Reply]

    @property
    def ok(self) -> bool:
        """Every recipient took the message."""
        return self.reply.ok and not self.refused


async def deliver(
    backend: Backend, sender: str, recipients: Sequence[str], message: bytes
) -> Delivered:
    """Send one message in a fresh session (quarantine release), to all recipients or none.

    A recipient the backend refuses is reported, and the data is not sent to the others:
    a release half done could not be told from one not done, and a retry would duplicate.
    """
    session = backend.session()
    try:
        reply = await session.mail(sender, ["BODY=8BITMIME"])
        if not reply.ok:
            return Delivered(reply, {})
        refused = {}
        for rcpt in recipients:
            answer = await session.rcpt(rcpt)
            if not answer.ok:
                refused[rcpt] = answer
        if refused:
            await session.rset()
            names = ", ".join(f"{r} ({a})" for r, a in refused.items())
            return Delivered(Reply(550, f"5.1.1 refused by the backend: {names}"), refused)
        return Delivered(await session.data(message), {})
    finally:
        await session.close()
