"""The listening SMTP server: aiosmtpd protocol with our limits, replies and graceful drain."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP

from gateway.config import ServerConfig
from gateway.events import EventKind, SecurityEvent
from gateway.listen import LISTEN_BACKLOG, listen_on
from gateway.service import Gateway
from gateway.smtp import replies
from gateway.smtp.handler import ProxyHandler
from gateway.smtp.limits import ConnectionCounts
from gateway.smtp.session import ClientSession
from gateway.types import Phase, SessionInfo

log = logging.getLogger(__name__)
# A plain address in angle brackets: a dot-atom local part (RFC 5322 atext) at a host name.
# The stdlib parser returns exactly these characters for it (tests compare the two).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDR = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
ACCEPTED_SETTLE = 0.1  # seconds for already-accepted connections to reach their protocol
# Connections the kernel queues before a worker accepts them (asyncio's default is 100): a
# burst of reconnecting senders overflowed it, and dropped SYNs cost clients seconds.


@dataclass
class ServerState:
    """Connections in service, shared by every protocol instance of one server."""

    draining: bool = False
    protocols: set[MailmoatSMTP] = field(default_factory=set)
    # Shared by the workers of a node (gateway.smtp.limits), or this process's own.
    per_ip: ConnectionCounts = field(default_factory=ConnectionCounts)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    accepted: int = 0  # connections that reached their protocol (drain waits for them)


class MailmoatSMTP(SMTP):
    """aiosmtpd's SMTP protocol plus connection limits, enhanced replies and drain."""

    def __init__(
        self,
        handler: ProxyHandler,
        state: ServerState,
        config: ServerConfig,
        hostname: str,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        # RFC 5321 4.5.3.1.6 counts the CRLF in the line length; +1 for a transparency dot.
        self.line_length_limit = config.max_line_length + 1
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident=replies.S220_GREETING_IDENT,
            tls_context=tls_context,
            require_starttls=config.require_tls,
            timeout=config.command_timeout,
            # AUTH PLAIN (ours, handler.auth_PLAIN) only with submission users, only over TLS.
            auth_exclude_mechanism=["LOGIN"] if config.submission_users else ["LOGIN", "PLAIN"],
            auth_require_tls=True,
            command_call_limit={
                **dict.fromkeys(("NOOP", "VRFY", "EXPN", "HELP"), config.max_junk_commands),
                "*": 2**31,  # the other commands are bounded by their own limits
            },
        )
        self.state = state
        self.config = config
        # Everything about this client connection lives in its session, not on the protocol.
        self.client = ClientSession()

    # --- identity ---

    def next_event_id(self) -> str:
        """Connection id plus '.N': one number per event in this connection."""
        return self.client.next_event_id()

    def tls_description(self) -> str:
        """Cipher and protocol when STARTTLS is in effect, '' otherwise."""
        if self.transport is None or self._tls_protocol is None:
            return ""
        cipher = self.transport.get_extra_info("cipher")
        return f"{cipher[1]} {cipher[0]}" if cipher else "tls"

    # --- connection accounting ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again for the TLS transport.
        super().connection_made(transport)
        if not first:
            return
        self.state.accepted += 1
        peer = transport.get_extra_info("peername") or ("", 0)
        self.client.client_ip, self.client.client_port = str(peer[0]), int(peer[1])
        state, cfg = self.state, self.config
        if state.draining:
            self.client.refusal = replies.S421_SHUTTING_DOWN
        elif len(state.protocols) >= cfg.max_connections:
            self.client.refusal = replies.S421_TOO_MANY_CONNECTIONS
        elif state.per_ip.count(self.client.client_ip) >= cfg.max_connections_per_ip:
            self.client.refusal = replies.S421_TOO_MANY_FROM_IP
        else:
            state.protocols.add(self)
            state.per_ip.add(self.client.client_ip, 1)
            self.client.registered = True

    def eof_received(self) -> bool | None:
        # aiosmtpd stops reading at EOF but keeps the transport half-open, so a client that
        # closed its side held a connection slot (per IP too) until the command timeout.
        # It has nothing more to say: close ours, freeing the slot now.
        super().eof_received()
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self.client.registered:
            self.client.registered = False
            self.state.protocols.discard(self)
            self.state.per_ip.add(self.client.client_ip, -1)
            if not self.state.protocols:
                self.state.idle.set()
        if self.client.backend is not None:
            task = self.loop.create_task(self.client.close_backend())
            self.state.tasks.add(task)
            task.add_done_callback(self.state.tasks.discard)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.client.refusal is not None:
            log.warning(
                "refused connection from %s: %s", self.client.client_ip, self.client.refusal
            )
            handler: ProxyHandler = self.event_handler
            await handler.gateway.record(
                SecurityEvent(
                    id=self.next_event_id(),
                    kind=EventKind.CONNECTION_REFUSED,
                    client_ip=self.client.client_ip,
                    action="refused",
                    smtp_reply=self.client.refusal,
                )
            )
            self.goodbye(self.client.refusal)
            return
        handler = self.event_handler
        info = SessionInfo(client_ip=self.client.client_ip)
        refusal = await handler.service.early(Phase.CONNECT, info, self.next_event_id)
        if refusal is not None:
            self.goodbye(refusal)
            return
        await super()._handle_client()

    # --- replies, timeouts and drain ---

    @property
    def in_transaction(self) -> bool:
        """From the start of MAIL to the reply to DATA."""
        return self.client.mail_pending or (
            self.envelope is not None and self.envelope.mail_from is not None
        )

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4's address parsing of MAIL and RCPT, without its per-call class.

        aiosmtpd defines a typing-only ``Protocol`` class inside ``_getaddr``, so every MAIL
        and every RCPT builds a class (ABCMeta): 34 of the method's 50 us, 2% of a
        pass-through message in bench.peers' profile. Same results (tested against it),
        except that an address the stdlib parser chokes on (``<alice@``: IndexError, which
        aiosmtpd answered with ``500 Error: (IndexError) ...``) is a malformed address. The
        plain ``<local@host.name>`` form is matched by a regex, without the parser.
        """
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDR.match(arg)
        rest = arg[plain.end() :].lstrip(" \t") if plain is not None else ""
        if plain is not None and not rest.startswith("("):  # (a comment: the parser's job)
            addr = plain[1]  # <dot-atom@host.name>, nearly every address: 1 us, not 12-17
        else:
            parsed = self._parse_addr(arg)
            if parsed is None:
                return None, None
            addr, rest = parsed
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    @staticmethod
    def _parse_addr(arg: str) -> tuple[str, str] | None:
        """The stdlib's parse of any other form (quoted, routed, literal); None if malformed."""
        address: Any  # an AngleAddr or an AddrSpec token: both have addr_spec
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
            return str(address.addr_spec), str(rest)
        # The stdlib parser raises more than HeaderParseError on hostile input: IndexError on
        # "<alice@", AttributeError on "<- +_@[0(>" (found by the tests' random arguments;
        # aiosmtpd answered "500 Error: (AttributeError) ..."): each is a malformed address.
        except (HeaderParseError, IndexError, AttributeError):
            return None

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        # After a final reply (421: errors, timeout) aiosmtpd still parses the commands the
        # client had pipelined. They must do nothing: no backend step, no event, and no
        # delivery whose 250 nobody would hear.
        if command in ("MAIL", "RCPT", "DATA") and (
            self.transport is None or self.transport.is_closing()
        ):
            return replies.S421_CLOSING
        return await super()._call_handler_hook(command, *args)

    def goodbye(self, reply: str) -> None:
        """Send a final reply and close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        self._writer.write(reply.encode("ascii") + b"\r\n")
        self.transport.close()

    async def push(self, status: str | bytes) -> None:
        text = replies.translate(status if isinstance(status, str) else status.decode("utf-8"))
        await super().push(text)
        if text.startswith(replies.DATA_REFUSALS):
            # aiosmtpd refused the data itself (too big, line too long): worth an event.
            await self.event_handler.gateway.record(
                SecurityEvent(
                    id=self.next_event_id(),
                    kind=EventKind.DATA_REFUSED,
                    client_ip=self.client.client_ip,
                    helo=self.session.host_name or "" if self.session else "",
                    action="refused",
                    smtp_reply=text,
                )
            )
        if text.startswith("421"):
            # RFC 5321 3.8: after a 421 the server closes the channel.
            if self.transport is not None:
                self.transport.close()
        elif text.startswith(("4", "5")) and not text.startswith(replies.S452_TOO_MANY_RCPTS):
            self.client.errors += 1
            if self.client.errors >= self.config.max_errors:
                log.warning("%s: %d errors, closing", self.client.conn_id, self.client.errors)
                self.goodbye(replies.S421_TOO_MANY_ERRORS)
        elif self.state.draining and not self.in_transaction:
            self.goodbye(replies.S421_SHUTTING_DOWN)

    async def smtp_DATA(self, arg: str) -> None:
        # The client gets data_timeout for the whole transfer (a slow drip is cut off).
        self._reset_timeout(self.config.data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            if self.transport is not None:
                self._reset_timeout()

    def pause_timeout(self) -> None:
        """Stop the client's idle timer while we scan and relay."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def resume_timeout(self) -> None:
        """Restart the idle timer for the next command."""
        if self.transport is not None:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        log.info("%s: timeout, closing", self.client.conn_id)
        self.goodbye("421 4.4.2 Timeout, closing connection")


class SmtpServer:
    """Listens, serves, and drains gracefully."""

    def __init__(self, gateway: Gateway, counts: ConnectionCounts | None = None) -> None:
        self.gateway = gateway
        self.state = ServerState() if counts is None else ServerState(per_ip=counts)
        self.handler = ProxyHandler(gateway)
        self.server: asyncio.Server | None = None
        self.tls_context = _tls_context(gateway.settings.server)

    def _protocol(self) -> MailmoatSMTP:
        return MailmoatSMTP(
            self.handler,
            self.state,
            self.gateway.settings.server,
            self.gateway.hostname,
            self.tls_context,
        )

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on ``sock`` when the workers share one); return the bound address."""
        if sock is None:
            sock = listening_socket(self.gateway.settings.server)
        # asyncio calls listen() again on a given socket: the backlog must be passed here too.
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, sock=sock, backlog=LISTEN_BACKLOG
        )
        sockname = self.server.sockets[0].getsockname()
        log.info("listening on %s:%s", sockname[0], sockname[1])
        return str(sockname[0]), int(sockname[1])

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting; let transactions in flight finish within the grace period."""
        grace = self.gateway.settings.server.shutdown_grace if grace is None else grace
        self.state.draining = True
        if self.server is not None:
            self.server.close()
            # Connections the loop accepted just before reach their protocol a few loop
            # turns later; without this wait they were dropped ungreeted when the process
            # ended (a refused connection during a restart). Wait until none arrives.
            seen = -1
            while seen != self.state.accepted:
                seen = self.state.accepted
                await asyncio.sleep(ACCEPTED_SETTLE)
        for protocol in list(self.state.protocols):
            if not protocol.in_transaction:
                protocol.goodbye(replies.S421_SHUTTING_DOWN)
        if self.state.protocols:
            self.state.idle.clear()
            try:
                async with asyncio.timeout(grace):
                    await self.state.idle.wait()
            except TimeoutError:
                pass
        for protocol in list(self.state.protocols):
            log.warning("%s: still busy after %ss grace, closing", protocol.client.conn_id, grace)
            protocol.goodbye(replies.S421_SHUTTING_DOWN)
        if self.server is not None:
            await self.server.wait_closed()


def listening_socket(config: ServerConfig) -> socket.socket:
    """One listening socket for all workers, bound before they are forked."""
    return listen_on(config.listen, "server.listen")


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
