"""The aiosmtpd hooks: mirror MAIL/RCPT to the backend, scan at DATA, dispose, record, reply."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from gateway.context import Envelope, ScanContext
from gateway.disposition import stamp
from gateway.errors import RelayError, StoreError
from gateway.events import SecurityEvent
from gateway.message import bare_line_endings
from gateway.pipeline import ScanResult
from gateway.relay import Reply
from gateway.smtp import replies
from gateway.types import Action, Verdict

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


def reverse_path(address: str | None) -> str:
    """aiosmtpd reports the null reverse-path as '<>'; the backend and events use ''."""
    return "" if address in (None, "<>") else address


def mirror(reply: Reply) -> str:
    """The backend's reply, as our reply to the client (sanitised, enhanced code ensured)."""
    return replies.format_reply(reply.code, reply.text)


class ProxyHandler:
    """Before-queue proxy: the client hears the backend's answers, and 250 only when it's safe."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def limits(self) -> Any:
        return self.gateway.settings.server

    async def handle_EHLO(
        self, server: MailmoatSMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # No AUTH: Mailmoat is an inbound gateway, it does not authenticate submitters.
        offered = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
        # aiosmtpd reads commands one at a time, so pipelined commands are safe to accept.
        return [*offered, "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: MailmoatSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if server.state.draining:
            return replies.S421_SHUTTING_DOWN
        if not valid_address(address):
            return replies.S553_BAD_ADDRESS
        server.mail_pending = True  # a drain waits for a transaction from its MAIL on
        try:
            return await self._mail(server, session, envelope, address, options)
        finally:
            server.mail_pending = False

    async def _mail(
        self, server: MailmoatSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        backend = server.backend_session(self.gateway.backend)
        try:
            reply = await backend.mail(reverse_path(address), options)
        except RelayError as exc:
            log.warning("%s: MAIL: %s", server.conn_id, exc)
            return await self._refused_step(
                server, session, address, (), "mail_deferred", replies.S451_BACKEND_DOWN, str(exc)
            )
        if not reply.ok:
            return await self._refused_step(
                server, session, address, (), "mail_refused", mirror(reply), str(reply)
            )
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        server.rcpt_overflow = False
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
            if server.rcpt_overflow:  # one event per transaction, not one per extra address
                return replies.S452_TOO_MANY_RCPTS
            server.rcpt_overflow = True
            return await refuse("rcpt_refused", replies.S452_TOO_MANY_RCPTS)
        if not accepted_domain(address, self.limits.accept_domains):
            return await refuse("rcpt_refused", replies.S550_RELAY_DENIED)
        backend = server.backend_session(self.gateway.backend)
        try:
            reply = await backend.rcpt(address)
        except RelayError as exc:
            log.warning("%s: RCPT: %s", server.conn_id, exc)
            return await refuse("rcpt_deferred", replies.S451_BACKEND_DOWN, str(exc))
        if not reply.ok:
            return await refuse("rcpt_refused", mirror(reply), str(reply))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.S250_RCPT_OK

    async def handle_RSET(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        if server.backend is not None:
            await server.backend.rset()
        return replies.S250_OK

    async def handle_QUIT(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        await server.close_backend()
        return replies.S221_BYE

    async def handle_DATA(self, server: MailmoatSMTP, session: Any, envelope: Any) -> str:
        # Our own work is bounded by check and backend timeouts, not by the client's timer.
        server.pause_timeout()
        event_id = server.next_event_id()
        raw: bytes = envelope.original_content
        env = Envelope(
            id=event_id,
            raw=raw,
            mail_from=reverse_path(envelope.mail_from),
            rcpts=tuple(envelope.rcpt_tos),
            client_ip=server.client_ip,
            client_port=server.client_port,
            helo=session.host_name or "",
            tls=server.tls_description(),
            mail_options=tuple(envelope.mail_options),
        )
        try:
            return await self._process(server, ScanContext(env))
        finally:
            server.resume_timeout()

    async def _process(self, server: MailmoatSMTP, ctx: ScanContext) -> str:
        gateway = self.gateway
        env = ctx.envelope
        backend = server.backend_session(gateway.backend)
        if self.limits.bare_newline == "reject" and any(bare_line_endings(env.raw)):
            answer = replies.S550_BARE_NEWLINE.format(id=env.id)
            await backend.rset()
            await gateway.record(self._event(ctx, None, "reject", answer, "", "bare newline"))
            return answer

        result = await gateway.pipeline.scan(ctx)
        verdict = result.verdict
        backend_reply = ""
        action = verdict.action
        if action in (Action.ACCEPT, Action.TAG):
            message = self._stamp(ctx, verdict)
            try:
                reply = await backend.data(message)
            except RelayError as exc:
                log.warning("%s: DATA: %s", env.id, exc)
                answer = replies.S451_BACKEND_LOST
                backend_reply = str(exc)
            else:
                backend_reply = str(reply)
                answer = replies.S250_QUEUED.format(id=env.id) if reply.ok else mirror(reply)
        else:
            await backend.rset()
            if action is Action.QUARANTINE:
                answer = await self._quarantine(ctx, verdict)
            elif action is Action.REJECT:
                answer = self._reject_text(verdict, env.id)
            elif action is Action.TEMPFAIL:
                answer = replies.S451_TEMPFAIL.format(id=env.id)
            else:  # DISCARD: an explicit policy decision to drop; the event records it.
                answer = replies.S250_QUEUED.format(id=env.id)
        if answer.startswith("250"):
            server.errors = 0  # max_errors counts errors without a message taken (as Postfix)
        gateway.metrics.observe(result)
        event = self._event(ctx, result, action.value, answer, backend_reply, verdict.reason)
        await gateway.record(event, gateway.retention(ctx, action))
        return answer

    async def _quarantine(self, ctx: ScanContext, verdict: Verdict) -> str:
        env = ctx.envelope
        message = self._stamp(ctx, verdict)
        try:
            await asyncio.to_thread(
                self.gateway.quarantine.hold,
                env.id,
                env.mail_from,
                env.rcpts,
                ctx.message.subject[:500],
                verdict.score,
                verdict.reason,
                message,
            )
        except StoreError as exc:
            # Not stored means not acknowledged: the sender keeps the message and retries.
            log.error("%s: quarantine failed: %s", env.id, exc)
            self.gateway.store_failed("quarantine", exc)
            return replies.S451_STORE_FAILED.format(id=env.id)
        self.gateway.store_ok("quarantine")
        return replies.S250_QUEUED.format(id=env.id)

    def _stamp(self, ctx: ScanContext, verdict: Verdict) -> bytes:
        env = ctx.envelope
        if not self.gateway.settings.policy.add_headers:
            return env.raw
        return stamp(env.raw, verdict, env.id, ctx.added_headers, self.gateway.hostname)

    @staticmethod
    def _reject_text(verdict: Verdict, event_id: str) -> str:
        if verdict.reply_text:
            return replies.format_reply(554, f"5.7.1 {verdict.reply_text} [{event_id}]")
        return replies.S554_REJECTED.format(id=event_id)

    def _event(
        self,
        ctx: ScanContext,
        result: ScanResult | None,
        action: str,
        answer: str,
        backend_reply: str,
        reason: str,
    ) -> SecurityEvent:
        env = ctx.envelope
        verdict = result.verdict if result is not None else None
        return SecurityEvent(
            id=env.id,
            kind="message",
            time=env.received_at,
            client_ip=env.client_ip,
            helo=env.helo,
            tls=env.tls,
            mail_from=env.mail_from,
            rcpts=env.rcpts,
            message_id=ctx.message.message_id[:500],
            subject=ctx.message.subject[:500],
            size=len(env.raw),
            score=verdict.score if verdict else None,
            action=action,
            reason=reason,
            smtp_reply=answer,
            backend_reply=backend_reply,
            symbols=tuple(s.as_dict() for s in verdict.symbols) if verdict else (),
            timings_ms=result.timings_ms if result is not None else {},
            versions=dict(self.gateway.versions),
        )

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
                client_ip=server.client_ip,
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
