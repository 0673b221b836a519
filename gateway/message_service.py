"""What happens to one message once it is received, whatever front received it.

The path of a message reads top to bottom in ``MessageService.process``:

1. refuse bare CR/LF when the site says so (SMTP smuggling, RFC 5321 2.3.8);
2. scan: parse once, every check, the staff rules, the policy -> a Verdict;
3. dispose: accept/tag -> the front's Delivery (the proxy relays to the backend, the milter
   hands the message back to the MTA with our headers); quarantine -> fsync'd copy and
   index; reject -> 5xx; tempfail -> 4xx; discard -> dropped, on purpose;
4. count it (metrics) and record the SecurityEvent, committed before the reply;
5. return an Outcome: the reply, the headers added, the event.

A front (gateway/smtp/, gateway/milter/) only translates its protocol into this call and the
Outcome back; it never decides, stores or records a message by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.context import ScanContext
from gateway.disposition import stamp, verdict_headers
from gateway.errors import RelayError, StoreError
from gateway.events import EventKind, SecurityEvent
from gateway.message import bare_line_endings
from gateway.pipeline import ScanResult
from gateway.relay import Reply
from gateway.smtp import replies
from gateway.types import Action, Phase, SessionInfo, Verdict

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

# The event kind of a refusal at each early step.
EARLY_KINDS = {
    Phase.CONNECT: EventKind.CONNECTION_REFUSED,
    Phase.HELO: EventKind.HELO_REFUSED,
    Phase.MAIL: EventKind.MAIL_REFUSED,
    Phase.RCPT: EventKind.RCPT_REFUSED,
}

# How a 4.7.28 names the limit a client went over.
RATE_LIMITS = {"client_ip": "from your address", "sender": "from this sender",
               "user": "from your account", "recipient": "for this recipient"}  # fmt: skip

Headers = Sequence[tuple[str, str]]


class Delivery(Protocol):
    """How an accepted message goes on from here; each front brings its own."""

    async def deliver(self, ctx: ScanContext, headers: Headers) -> Reply:
        """Pass the message on with ``headers`` added; RelayError if it was lost on the way."""
        ...

    async def abandon(self) -> None:
        """The message goes nowhere (quarantined, refused, dropped): reset what was begun."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the front tells its peer, and what was decided and recorded."""

    action: Action
    reply: str  # the full SMTP reply, e.g. "250 2.0.0 OK: queued as ID"
    verdict: Verdict | None
    event: SecurityEvent
    # Header fields to add, top first (the proxy has already added them to what it relayed).
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        """The message was taken (delivered, quarantined or discarded): a 2xx."""
        return self.reply.startswith("2")


@dataclass
class MessageService:
    """The path of one message after it is received; ``gateway`` holds the parts in service."""

    gateway: Gateway
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def process(
        self,
        ctx: ScanContext,
        delivery: Delivery,
        front: Mapping[str, Any] | None = None,
        trace: tuple[str, str] | None = None,
    ) -> Outcome:
        """Scan, dispose, record: the reply is returned only once the event is committed.

        ``front`` holds what the front knows beyond the envelope (the MTA's queue id and
        macros for the milter); it goes into the event's details. ``trace`` is the Received
        field of a front that passes the message on itself (the proxy; an MTA adds its own).
        """
        gateway = self.gateway
        env = ctx.envelope
        details = dict(front or {})
        # 1. Bare line endings, when the site refuses them outright.
        if gateway.settings.server.bare_newline == "reject" and any(bare_line_endings(env.raw)):
            answer = replies.S550_BARE_NEWLINE.format(id=env.id)
            await delivery.abandon()
            event = self._event(ctx, None, "reject", answer, "", "bare newline", details)
            await gateway.record(event)
            return Outcome(Action.REJECT, answer, None, event)

        # 1b. A store that failed: defer until it answers again, rather than deliver mail
        # whose decision cannot be recorded (the failure is in the log, each time).
        if not await gateway.store_answers():
            answer = replies.S451_STORE_FAILED.format(id=env.id)
            await delivery.abandon()
            event = self._event(ctx, None, Action.TEMPFAIL.value, answer, "",
                                "the event store is unavailable", details)  # fmt: skip
            await gateway.record(event)
            return Outcome(Action.TEMPFAIL, answer, None, event)

        # 2. Scan, knowing which senders the recipients themselves allow.
        ctx.allowed_senders.update(gateway.sender_allows.common(env.rcpts))
        result = await gateway.pipeline.scan(ctx)
        verdict = result.verdict
        action = verdict.action

        # 2b. Greylisting: a first message from an unknown triplet is deferred (greylist.py).
        wait = await gateway.greylist.wait(ctx, verdict)
        if wait:
            answer = replies.S451_GREYLISTED.format(wait=wait, id=env.id)
            await delivery.abandon()
            gateway.metrics.greylisted.inc()
            event = self._event(ctx, result, Action.TEMPFAIL.value, answer, "",
                                f"greylisted (first try; {wait} s to wait)", details)  # fmt: skip
            await gateway.record(event)
            return Outcome(Action.TEMPFAIL, answer, verdict, event)
        headers: tuple[tuple[str, str], ...] = (trace,) if trace else ()
        if gateway.settings.policy.add_headers:
            headers = (*headers, *ctx.added_headers, *verdict_headers(verdict, env.id))

        # 3. Dispose.
        backend_reply = ""
        if action in (Action.ACCEPT, Action.TAG):
            try:
                reply = await delivery.deliver(ctx, headers)
            except RelayError as exc:
                log.warning("%s: DATA: %s", env.id, exc)
                answer, backend_reply = replies.S451_BACKEND_LOST, str(exc)
            else:
                backend_reply = str(reply)
                answer = (
                    replies.S250_QUEUED.format(id=env.id)
                    if reply.ok
                    else replies.format_reply(reply.code, reply.text)
                )
        else:
            await delivery.abandon()
            if action is Action.QUARANTINE:
                answer = await self._quarantine(ctx, verdict, headers)
            elif action is Action.REJECT:
                answer = reject_text(verdict, env.id)
            elif action is Action.TEMPFAIL:
                answer = replies.S451_TEMPFAIL.format(id=env.id)
            else:  # DISCARD: an explicit policy decision to drop; the event records it.
                answer = replies.S250_QUEUED.format(id=env.id)

        # 4. Count and record, before anyone hears the reply.
        gateway.metrics.observe(result)
        event = self._event(ctx, result, action.value, answer, backend_reply, verdict.reason,
                            details)  # fmt: skip
        await gateway.record(event, gateway.retention(ctx, action))

        # 5. The outcome for the front.
        return Outcome(action, answer, verdict, event, headers)

    async def early(
        self,
        phase: Phase,
        session: SessionInfo,
        event_id: Callable[[], str],
        front: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The checks of an SMTP step (connect, HELO, MAIL, RCPT): a refusal, or None.

        A refusal is recorded (``<step>_refused``, with the symbols that made it) before
        the reply is returned; ``event_id`` is called only then.
        """
        limits = self.gateway.ratelimits
        limited = await limits.check(phase, session) if limits.enabled else None
        if limited is not None:
            eid = event_id()
            self.gateway.metrics.ratelimited.labels(limited.kind).inc()
            reply = replies.S451_RATE_LIMITED.format(what=RATE_LIMITS[limited.kind], id=eid)
            kind = EventKind.MAIL_DEFERRED if phase is Phase.MAIL else EventKind.RCPT_DEFERRED
            await self.gateway.record(SecurityEvent(
                id=eid, kind=kind, client_ip=session.client_ip, helo=session.helo,
                tls=session.tls, mail_from=session.mail_from,
                rcpts=(session.rcpt,) if session.rcpt else (), action="tempfail",
                reason=f"rate limit: {limited.kind} {limited.key}", smtp_reply=reply,
                details={**(front or {}), "limit": limited.kind},
            ))  # fmt: skip
            return reply
        verdict = await self.gateway.pipeline.early(phase, session)
        if verdict is None:
            return None
        eid = event_id()
        if verdict.action is Action.TEMPFAIL:
            code = "421 4.7.0" if phase is Phase.CONNECT else "451 4.7.1"
            reply = f"{code} Try again later [{eid}]"
        else:
            code = "554 5.7.1" if phase in (Phase.CONNECT, Phase.HELO) else "550 5.7.1"
            reply = replies.format_reply(
                int(code[:3]), f"{code[4:]} {verdict.reply_text or 'Refused by policy'} [{eid}]"
            )
        kind = EARLY_KINDS[phase]
        event = SecurityEvent(
            id=eid,
            kind=kind,
            client_ip=session.client_ip,
            helo=session.helo,
            tls=session.tls,
            mail_from=session.mail_from,
            rcpts=(session.rcpt,) if session.rcpt else (),
            score=verdict.score,
            action=verdict.action.value,
            reason=verdict.reason,
            smtp_reply=reply,
            symbols=tuple(s.as_dict() for s in verdict.symbols),
            versions=dict(self.gateway.versions),
            details=dict(front or {}),
        )
        await self.gateway.record(event)
        return reply

    async def _quarantine(self, ctx: ScanContext, verdict: Verdict, headers: Headers) -> str:
        env = ctx.envelope
        message = self.stamped(ctx, headers)
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

    def stamped(self, ctx: ScanContext, headers: Headers) -> bytes:
        """The message as passed on: forged copies of our headers removed, ours on top."""
        env = ctx.envelope
        if not headers:
            return env.raw
        return stamp(env.raw, headers, self.gateway.hostname)

    def _event(
        self,
        ctx: ScanContext,
        result: ScanResult | None,
        action: str,
        answer: str,
        backend_reply: str,
        reason: str,
        details: Mapping[str, Any],
    ) -> SecurityEvent:
        env = ctx.envelope
        verdict = result.verdict if result is not None else None
        return SecurityEvent(
            id=env.id,
            kind=EventKind.MESSAGE,
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
            details=details,
        )


def reject_text(verdict: Verdict, event_id: str) -> str:
    """The 5xx for a rejected message: the deciding finding's text, or ours."""
    if verdict.reply_text:
        return replies.format_reply(554, f"5.7.1 {verdict.reply_text} [{event_id}]")
    return replies.S554_REJECTED.format(id=event_id)
