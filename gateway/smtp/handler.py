"""The aiosmtpd hooks: mirror MAIL/RCPT to the backend; at DATA, the message service's reply."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from gateway.context import Envelope, ScanContext
from gateway.disposition import received
from gateway.errors import RelayError
from gateway.events import EventKind, SecurityEvent
from gateway.message_service import Headers, MessageService
from gateway.relay import BackendSession, Reply
from gateway.smtp import replies
from gateway.types import Phase, SessionInfo
from gateway.web.security import LoginLimiter, verify_password

if TYPE_CHECKING:
    from gateway.service import Gateway
    from gateway.smtp.server import MailmoatSMTP

log = logging.getLogger(__name__)

# RFC 5321 4.5.3.1.3: a path is at most 256 octets; control characters never belong in one.
_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 256


def valid_address(address: str) -> bool:
    """An address fit to pass to the backend: bounded, and no control characters."""
    return len(address) <= MAX_PATH and not _BAD_ADDRESS.search(address)


def accepted_domain(address: str, domains: list[str]) -> bool:
    """True when no domains are configured, or the recipient's domain is one of them."""
    if not domains:
        return True
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return any(
        domain == d.lower().lstrip(".") or (d.startswith(".") and domain.endswith(d.lower()))
        for d in domains
    )


def authenticated_user(session: Any) -> str:
    """The user a session authenticated as (SMTP AUTH), or ''."""
    if session.authenticated and isinstance(session.login_data, bytes):
        return str(session.login_data.decode("utf-8", "replace"))
    return ""


def check_submission_user(users: Path | None, login: str, password: str) -> bool:
    """The password against the user's argon2 hash in the submission users file (blocking)."""
    stored = None
    if users is not None:
        try:
            lines = users.read_text(encoding="utf-8").splitlines()
        except OSError:
            log.error("submission users file %s cannot be read", users)
            return False
        for line in lines:
            name, sep, digest = line.strip().partition(":")
            if sep and name == login and not name.startswith("#"):
                stored = digest
                break
    # Verified against a dummy hash when unknown: the time does not tell who exists.
    return verify_password(stored, password)


def reverse_path(address: str | None) -> str:
    """aiosmtpd reports the null reverse-path as '<>'; the backend and events use ''."""
    return "" if address in (None, "<>") else address


def mirror(reply: Reply) -> str:
    """The backend's reply, as our reply to the client (sanitised, enhanced code ensured)."""
    return replies.format_reply(reply.code, reply.text)


class BackendDelivery:
    """The proxy's delivery: the stamped message to this client's backend session."""

    def __init__(self, backend: BackendSession, service: MessageService) -> None:
        self.backend = backend
        self.service = service

    async def deliver(self, ctx: ScanContext, headers: Headers) -> Reply:
        return await self.backend.data(self.service.stamped(ctx, headers))

    async def abandon(self) -> None:
        await self.backend.rset()


class ProxyHandler:
    """Before-queue proxy: the client hears the backend's answers, and 250 only when it's safe.

    It translates SMTP into the message service's call (gateway/message_service.py) and the
    Outcome back into a reply; it decides nothing by itself.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.service = MessageService(gateway)
        # Not named auth_*: aiosmtpd takes every handler attribute so named for a mechanism.
        self.submission_limiter = LoginLimiter(per_ip=10, per_user=5, window=300.0)

    @property
    def limits(self) -> Any:
        return self.gateway.settings.server

    async def handle_EHLO(
        self, server: MailmoatSMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # AUTH only where submission users are configured (aiosmtpd offers it after TLS).
        offered = responses[:-1]
        if not self.limits.submission_users:
            offered = [line for line in offered if not line.startswith("250-AUTH")]
        # aiosmtpd reads commands one at a time, so pipelined commands are safe to accept.
        return [*offered, "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: MailmoatSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if server.state.draining:
            return replies.S421_SHUTTING_DOWN
        if not valid_address(address):
            return replies.S553_BAD_ADDRESS
        server.client.mail_pending = True  # a drain waits for a transaction from its MAIL on
        try:
            return await self._mail(server, session, envelope, address, options)
        finally:
            server.client.mail_pending = False

    def session_info(
        self, server: MailmoatSMTP, session: Any, mail_from: str | None = None, rcpt: str = ""
    ) -> SessionInfo:
        """What the checks of an early phase (and the backend, by XFORWARD) see of it."""
        tls = server.tls_description()
        protocol = "ESMTP" if getattr(session, "extended_smtp", True) else "SMTP"
        return SessionInfo(
            client_ip=server.client.client_ip,
            helo=session.host_name or "",
            mail_from=reverse_path(mail_from),
            rcpt=rcpt,
            tls=tls,
            client_port=server.client.client_port,
            protocol=protocol + ("S" if tls else ""),
            session_id=server.client.conn_id,
            user=authenticated_user(session),
        )

    async def _mail(
        self, server: MailmoatSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        info = self.session_info(server, session, address)
        if not server.client.helo_checked:  # the HELO phase, once, before the first MAIL
            server.client.helo_checked = True
            refusal = await self.service.early(Phase.HELO, info, server.next_event_id)
            if refusal is not None:
                return refusal
        refusal = await self.service.early(Phase.MAIL, info, server.next_event_id)
        if refusal is not None:
            return refusal
        backend = server.client.backend_session(self.gateway.backend)
        try:
            reply = await backend.mail(reverse_path(address), options, info)
        except RelayError as exc:
            log.warning("%s: MAIL: %s", server.client.conn_id, exc)
            return await self._refused_step(
                server,
                session,
                address,
                (),
                EventKind.MAIL_DEFERRED,
                replies.S451_BACKEND_DOWN,
                str(exc),
            )
        if not reply.ok:
            return await self._refused_step(
                server, session, address, (), EventKind.MAIL_REFUSED, mirror(reply), str(reply)
            )
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        server.client.rcpt_overflow = False
        return replies.S250_SENDER_OK

    async def handle_RCPT(
        self, server: MailmoatSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not valid_address(address):
            return replies.S553_BAD_ADDRESS

        async def refuse(kind: str, answer: str, backend_reply: str = "") -> str:
            return await self._refused_step(
                server, session, envelope.mail_from, (address,), kind, answer, backend_reply
            )

        if len(envelope.rcpt_tos) >= self.limits.max_recipients:
            if server.client.rcpt_overflow:  # one event per transaction, not one per extra address
                return replies.S452_TOO_MANY_RCPTS
            server.client.rcpt_overflow = True
            return await refuse(EventKind.RCPT_REFUSED, replies.S452_TOO_MANY_RCPTS)
        # An authenticated submitter may send anywhere; anyone else only to our domains.
        if not session.authenticated:
            if not accepted_domain(address, self.limits.accept_domains):
                return await refuse(EventKind.RCPT_REFUSED, replies.S550_RELAY_DENIED)
            known = self.gateway.recipients
            if known is not None and not known.knows(address):
                return await refuse(EventKind.RCPT_REFUSED, replies.S550_UNKNOWN_USER)
        info = self.session_info(server, session, envelope.mail_from, address)
        refusal = await self.service.early(Phase.RCPT, info, server.next_event_id)
        if refusal is not None:
            return refusal
        backend = server.client.backend_session(self.gateway.backend)
        try:
            reply = await backend.rcpt(address)
        except RelayError as exc:
            log.warning("%s: RCPT: %s", server.client.conn_id, exc)
            return await refuse(EventKind.RCPT_DEFERRED, replies.S451_BACKEND_DOWN, str(exc))
        if not reply.ok:
            return await refuse(EventKind.RCPT_REFUSED, mirror(reply), str(reply))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.S250_RCPT_OK

    async def auth_PLAIN(self, server: MailmoatSMTP, args: list[str]) -> AuthResult:
        """AUTH PLAIN (RFC 4616) against [server] submission_users, hashed off the loop.

        aiosmtpd's own PLAIN calls a blocking authenticator; an argon2 check takes tens of
        milliseconds, so this one runs it in a thread. Failures count against the address.
        """
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING or not isinstance(blob, bytes):
                return AuthResult(success=False)  # challenge_auth has answered
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                return AuthResult(
                    success=False, handled=False, message="501 5.5.2 Cannot decode base64"
                )
        parts = blob.split(b"\0")
        if len(parts) != 3:
            return AuthResult(
                success=False, handled=False, message="501 5.5.2 Cannot split the credentials"
            )
        login = parts[1].decode("utf-8", "replace")
        ip = server.client.client_ip
        if self.submission_limiter.blocked(ip, login):
            return AuthResult(success=False, handled=False, message=replies.S454_AUTH_LIMITED)
        users = self.gateway.settings.server.submission_users
        ok = await asyncio.to_thread(
            check_submission_user, users, login, parts[2].decode("utf-8", "replace")
        )
        if not ok:
            self.submission_limiter.failed(ip, login)
            log.warning("%s: AUTH failed for %r", server.client.conn_id, login[:64])
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(parts[1], b""))

    async def handle_RSET(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        if server.client.backend is not None:
            await server.client.backend.rset()
        return replies.S250_OK

    async def handle_QUIT(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        await server.client.close_backend()
        return replies.S221_BYE

    async def handle_DATA(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        # Our own work is bounded by check and backend timeouts, not by the client's timer.
        server.pause_timeout()
        env = Envelope(
            id=server.next_event_id(),
            raw=envelope.original_content,
            mail_from=reverse_path(envelope.mail_from),
            rcpts=tuple(envelope.rcpt_tos),
            client_ip=server.client.client_ip,
            client_port=server.client.client_port,
            helo=session.host_name or "",
            tls=server.tls_description(),
            mail_options=tuple(envelope.mail_options),
            user=authenticated_user(session),
        )
        protocol = self.session_info(server, session).protocol
        trace = received(
            env.helo, env.client_ip, self.gateway.hostname, protocol, env.id, env.rcpts, env.tls
        )
        try:
            backend = server.client.backend_session(self.gateway.backend)
            front = {"auth_user": env.user} if env.user else None
            outcome = await self.service.process(
                ScanContext(env), BackendDelivery(backend, self.service), front, trace
            )
        finally:
            server.resume_timeout()
        if outcome.accepted:
            server.client.errors = (
                0  # max_errors counts errors without a message taken (as Postfix)
            )
        return outcome.reply

    async def _refused_step(
        self,
        server: MailmoatSMTP,
        session: Any,
        mail_from: str | None,
        rcpts: tuple[str, ...],
        kind: str,
        answer: str,
        backend_reply: str,
    ) -> str:
        """Record a refused or deferred SMTP step (probing, outages); return the answer."""
        await self.gateway.record(
            SecurityEvent(
                id=server.next_event_id(),
                kind=kind,
                client_ip=server.client.client_ip,
                helo=session.host_name or "",
                tls=server.tls_description(),
                mail_from=reverse_path(mail_from),
                rcpts=rcpts,
                action="refused",
                smtp_reply=answer,
                backend_reply=backend_reply,
            )
        )
        return answer

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default reply would be "500 Error: (Class) text": it leaks internals and
        # tells the sender to give up. A bug on our side is temporary: 451, and a traceback.
        log.error("SMTP session error", exc_info=error)
        return replies.S451_INTERNAL
