"""One MTA connection of the milter front: commands in, the message service's outcome out.

State lives here, per connection (client, HELO, macros) and per message (sender,
recipients, header fields, body); nothing is decided here. At the end of the message the
envelope goes to ``MessageService.process`` and its Outcome becomes milter replies:

| action          | replies to the end of message                                       |
|-----------------|---------------------------------------------------------------------|
| accept, tag     | delete forged copies of our headers, insert ours on top, accept     |
| reject          | SMFIR_REPLYCODE with our 5xx text (the MTA says it to the client)   |
| tempfail        | SMFIR_REPLYCODE with our 4xx text                                   |
| discard         | SMFIR_DISCARD                                                       |
| quarantine      | our fsync'd copy first; then SMFIR_DISCARD, or SMFIR_QUARANTINE     |
|                 | (the MTA's hold queue) with [milter] quarantine = "hold"            |

A failure on our side is a 4xx, so the MTA defers (never accepts what was not scanned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.context import Envelope, ScanContext, new_connection_id
from gateway.disposition import forged_fields
from gateway.message_service import Headers, MessageService, Outcome
from gateway.milter import protocol as p
from gateway.relay import Reply
from gateway.smtp import replies
from gateway.types import Action, Phase, SessionInfo

if TYPE_CHECKING:
    from gateway.config import MilterConfig

log = logging.getLogger(__name__)

# Macros asked of the MTA, per stage; they go into the event, so that an event can be found
# from the MTA's log line (queue id) and back.
SYMBOLS = {
    p.SMFIM_CONNECT: "j {daemon_name} {client_addr} {client_name} {client_port}",
    p.SMFIM_HELO: "{tls_version} {cipher}",
    p.SMFIM_ENVFROM: "i {auth_authen} {auth_type}",
    p.SMFIM_EOM: "i",
}
# Macros recorded in the event's details (mta.*), without braces.
RECORDED = ("i", "j", "daemon_name", "client_addr", "client_name", "client_port",
            "auth_authen", "auth_type", "tls_version", "cipher")  # fmt: skip


class MilterDelivery:
    """Accepted mail goes back to the MTA, which queues it after our reply: nothing to send.

    The MTA keeps the message as it came, so what the proxy strips in ``stamp`` (forged
    fields of ours) is found here, to be deleted by name and index in the replies.
    """

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id
        self.forged: tuple[tuple[str, int], ...] = ()

    async def deliver(self, ctx: ScanContext, headers: Headers) -> Reply:
        if headers:  # as stamp: nothing is removed when nothing of ours is added
            self.forged = forged_fields(ctx.envelope.raw, self.authserv_id)
        return Reply(250, "2.0.0 handed back to the MTA")

    async def abandon(self) -> None:
        return None


@dataclass
class MessageState:
    """One message: from MAIL to the end of the body (or an abort)."""

    mail_from: str = ""
    mail_options: tuple[str, ...] = ()
    rcpts: list[str] = field(default_factory=list)
    head: list[bytes] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False


def unbracket(address: str) -> str:
    """'<a@b>' -> 'a@b'; '<>' -> '' (the null reverse-path)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


class MilterSession:
    """Serves one connection from the MTA (possibly several SMTP sessions, by QUIT_NC)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: MessageService,
        config: MilterConfig,
        max_message_size: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.service = service
        self.config = config
        self.max_message_size = max_message_size
        self.protocol = 0  # the negotiated SMFIP_* flags
        self.busy = False  # inside a message: a drain waits for it
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.conn_id = new_connection_id()
        self.seq = 0
        self.macros: dict[str, str] = {}
        self.client_name = ""
        self.client_ip = ""
        self.client_port = 0
        self.helo = ""
        self.message: MessageState | None = None

    async def run(self) -> None:
        """Answer commands until the MTA quits or the connection breaks."""
        try:
            while True:
                async with asyncio.timeout(self.config.idle_timeout):
                    packet = await p.read_packet(self.reader)
                if packet is None or not await self.handle(packet):
                    break
        except (p.MilterProtocolError, TimeoutError, ConnectionError) as exc:
            log.warning("milter %s: closing: %s", self.conn_id, exc or type(exc).__name__)
        finally:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def send(self, *packets: bytes) -> None:
        self.writer.write(b"".join(packets))
        await self.writer.drain()

    async def _continue(self, no_reply_flag: int = 0) -> None:
        if not self.protocol & no_reply_flag:
            await self.send(p.packet(p.SMFIR_CONTINUE))

    async def handle(self, packet: p.Packet) -> bool:
        """One command; False when the connection is to be closed."""
        command, data = packet.command, packet.data
        if command == p.SMFIC_OPTNEG:
            answer, self.protocol = p.negotiate(p.parse_options(data), SYMBOLS)
            await self.send(answer)
        elif command == p.SMFIC_MACRO:
            _, values = p.macros(data)
            self.macros.update({k.strip("{}"): v for k, v in values.items()})
        elif command == p.SMFIC_CONNECT:
            self.client_name, self.client_ip, self.client_port = p.connect_info(data)
            await self._early(Phase.CONNECT)
        elif command == p.SMFIC_HELO:
            self.helo = (p.cstrings(data) or [""])[0][:255]
            await self._early(Phase.HELO)
        elif command == p.SMFIC_MAIL:
            args = p.cstrings(data)
            self.message = MessageState(
                mail_from=unbracket(args[0]) if args else "", mail_options=tuple(args[1:])
            )
            self.busy = True
            await self._early(Phase.MAIL)
        elif command == p.SMFIC_RCPT:
            args = p.cstrings(data)
            rcpt = unbracket(args[0]) if args else ""
            if await self._early(Phase.RCPT, rcpt) and self.message is not None:
                self.message.rcpts.append(rcpt)
        elif command == p.SMFIC_DATA:
            await self._continue(p.SMFIP_NR_DATA)
        elif command == p.SMFIC_HEADER:
            self._header(data)
            await self._continue(p.SMFIP_NR_HDR)
        elif command == p.SMFIC_EOH:
            self._add(b"\r\n")
            await self._continue(p.SMFIP_NR_EOH)
        elif command == p.SMFIC_BODY:
            self._add(data, body=True)
            await self._continue(p.SMFIP_NR_BODY)
        elif command == p.SMFIC_BODYEOB:
            if data:
                self._add(data, body=True)
            await self.end_of_message()
        elif command == p.SMFIC_ABORT:  # the MTA's RSET, or the client went away
            self.message = None
            self.busy = False
        elif command == p.SMFIC_UNKNOWN:
            await self._continue(p.SMFIP_NR_UNKN)
        elif command == p.SMFIC_QUIT_NC:  # a new SMTP session on this same connection
            self._reset_connection()
        elif command == p.SMFIC_QUIT:
            return False
        else:
            raise p.MilterProtocolError(f"unknown command {command!r}")
        return True

    async def _early(self, phase: Phase, rcpt: str = "") -> bool:
        """The checks of this step: continue (True), or our refusal as the reply (False)."""
        info = SessionInfo(
            client_ip=self.client_ip or self.macros.get("client_addr", ""),
            client_name=self.client_name,
            helo=self.helo,
            mail_from=self.message.mail_from if self.message else "",
            rcpt=rcpt,
            tls=self.macros.get("tls_version", ""),
            user=self.macros.get("auth_authen", ""),
        )
        front = {
            "front": "milter",
            "mta": {k: self.macros[k] for k in RECORDED if self.macros.get(k)},
        }
        refusal = await self.service.early(phase, info, self.next_event_id, front)
        if refusal is None:
            await self._continue()
            return True
        await self.send(p.reply_code(refusal))
        return False

    def _header(self, data: bytes) -> None:
        name, _, rest = data.partition(b"\0")
        value = rest.split(b"\0", 1)[0]
        # Folded lines come with bare LFs (Postfix) or CRLFs: the message we scan has CRLFs.
        value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not self.protocol & p.SMFIP_HDR_LEADSPC:
            value = b" " + value  # the MTA dropped the space after the colon
        self._add(name + b":" + value + b"\r\n")

    def _add(self, data: bytes, body: bool = False) -> None:
        message = self.message
        if message is None:
            return  # the MTA sent data outside a message: nothing to keep it for
        message.size += len(data)
        if message.size > self.max_message_size:
            # Bounded: past the limit nothing more is kept; the end of message says 552.
            message.too_big = True
            message.head.clear()
            message.body.clear()
            return
        (message.body if body else message.head).append(data)

    def next_event_id(self) -> str:
        """Connection id plus '.N': one number per message on this connection."""
        self.seq += 1
        return f"{self.conn_id}.{self.seq}"

    async def end_of_message(self) -> None:
        message, self.message = self.message, None
        try:
            if message is None:
                raise p.MilterProtocolError("end of message without a message")
            if message.too_big:
                limit = self.max_message_size
                await self.send(p.reply_code(replies.S552_TOO_BIG.format(limit=limit)))
                return
            delivery = MilterDelivery(self.service.gateway.hostname)
            outcome = await self._process(message, delivery)
            await self.send(*self.replies(outcome, delivery.forged))
        except p.MilterProtocolError:
            raise
        except Exception:
            # A bug or an outage of ours is temporary for the sender: 4xx, never accept.
            log.exception("milter %s: end of message failed", self.conn_id)
            await self.send(p.reply_code(replies.S451_INTERNAL))
        finally:
            self.busy = False

    async def _process(self, message: MessageState, delivery: MilterDelivery) -> Outcome:
        raw = b"".join(message.head) + b"".join(message.body)
        ip = self.client_ip or self.macros.get("client_addr", "")
        env = Envelope(
            id=self.next_event_id(),
            raw=raw,
            mail_from=message.mail_from,
            rcpts=tuple(message.rcpts),
            client_ip=ip,
            client_port=self.client_port,
            helo=self.helo,
            tls=self.macros.get("tls_version", ""),
            mail_options=message.mail_options,
            user=self.macros.get("auth_authen", ""),
        )
        mta = {k: self.macros[k] for k in RECORDED if self.macros.get(k)}
        front: dict[str, Any] = {"front": "milter", "mta": mta}
        if self.client_name:
            front["client_name"] = self.client_name
        return await self.service.process(ScanContext(env), delivery, front)

    def replies(self, outcome: Outcome, forged: Sequence[tuple[str, int]] = ()) -> list[bytes]:
        """The end-of-message replies for an outcome (see the table in the module doc).

        ``forged``: fields of ours that arrived forged, (name, occurrence of that name).
        """
        action = outcome.action
        if not outcome.accepted:  # reject, tempfail, or a failure on our side
            return [p.reply_code(outcome.reply)]
        if action is Action.DISCARD:
            return [p.packet(p.SMFIR_DISCARD)]
        if action is Action.QUARANTINE:
            if self.config.quarantine == "hold":
                reason = p.cstr(f"Mailmoat quarantine {outcome.event.id}")
                return [p.packet(p.SMFIR_QUARANTINE, reason), p.packet(p.SMFIR_ACCEPT)]
            return [p.packet(p.SMFIR_DISCARD)]
        out = []
        # Highest occurrence first: deleting one never shifts the index of the next.
        for name, index in sorted(forged, key=lambda f: (f[0].lower(), -f[1])):
            out.append(p.header_change(p.SMFIR_CHGHEADER, index, name, ""))
        lead = " " if self.protocol & p.SMFIP_HDR_LEADSPC else ""
        # Inserted at the top one by one: the last inserted ends up first.
        for name, value in reversed(outcome.headers):
            folded = value.replace("\r\n", "\n")
            out.append(p.header_change(p.SMFIR_INSHEADER, 0, name, lead + folded))
        out.append(p.packet(p.SMFIR_ACCEPT))
        return out
