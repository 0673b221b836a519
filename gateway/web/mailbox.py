"""Mailbox owners' own quarantine: digest links, sign-in by mailed link, their held mail.

No account and no password: a mailbox owner proves the address by receiving mail there. A
digest link is the credential for one action on one message (gateway.digest). A sign-in link
(in each digest, or mailed on request from /my) opens a session scoped to that one address:
it sees and acts on the messages held for that recipient, nothing else, and is refused by
every staff page. Each action is an audit event with the address as the user; releases and
allows label the message ham, deletes label it spam, in the recipient's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.context import new_connection_id
from gateway.digest import LinkClaim, signin_message
from gateway.errors import GatewayError, UnknownIdError
from gateway.events import EventKind, SecurityEvent
from gateway.quarantine import QuarantineEntry
from gateway.relay import deliver
from gateway.smtp.handler import accepted_domain
from gateway.web.security import LoginLimiter, new_token, same_token

if TYPE_CHECKING:
    from gateway.web.app import Console

ADDRESS = re.compile(r"[^@\s<>\"(),;:\\]{1,64}@[A-Za-z0-9.-]{1,253}")
# Sign-in mails asked for: per address and per client address, in an hour.
SIGNIN_LIMIT = LoginLimiter(per_ip=20, per_user=3, window=3600.0)
SIGNIN_SENT = (
    "If mail for this address is held here, a sign-in link is on its way to it. "
    "It works once, for a few days."
)


async def act(console: Console, entry: QuarantineEntry, recipient: str, action: str,
              via: str) -> str:  # fmt: skip
    """Release, delete or always allow, for one recipient of a held message; what happened."""
    if action in ("release", "allow"):
        if action == "allow":
            if not entry.mail_from:
                return "A message without a sender (a bounce) cannot be allowed."
            if not await asyncio.to_thread(
                console.store.allow_sender, recipient, entry.mail_from, recipient
            ):
                return "Your list of allowed senders is full: remove one first."
        reply = await console.release(entry.id, recipient, recipients=[recipient])
        done = "Released: it is on its way to your mailbox." if reply.ok else (
            f"Your mail store refused it: {reply}")  # fmt: skip
        if action == "allow":
            done = f"{entry.mail_from} is allowed from now on, when it proves who it is. {done}"
    else:
        if len(entry.rcpts) == 1:
            await asyncio.to_thread(console.quarantine.set_status, entry.id, "deleted")
        with contextlib.suppress(UnknownIdError):
            await asyncio.to_thread(console.store.add_label, entry.id, "spam", "user", recipient)
        done = "Deleted."
    event = SecurityEvent(
        id=f"{new_connection_id()}.1", kind=EventKind.AUDIT, action=f"user_{action}",
        details={"user": recipient, "target": entry.id, "via": via, "sender": entry.mail_from},
    )  # fmt: skip
    with contextlib.suppress(GatewayError):
        await asyncio.to_thread(console.recorder.record, event)
    return done


def held_for(entry: QuarantineEntry, recipient: str) -> bool:
    return entry.status == "held" and recipient in {r.lower() for r in entry.rcpts}


async def digest_link(console: Console, request: Request) -> Response:
    """A link from a digest: GET shows what it will do and asks (mail scanners fetch links:
    a GET changes nothing); POST does it, once, for that recipient only."""
    token = request.path_params["token"]
    try:
        claim = console.links.claim(token)
        entry = await asyncio.to_thread(console.quarantine.get, claim.message_id)
    except UnknownIdError as exc:
        return console.page(request, "error.html", 403, message=str(exc))
    if not held_for(entry, claim.recipient):
        return console.page(request, "error.html", 410, message="This message is no longer held.")
    done = ""
    if request.method == "POST":
        if not await asyncio.to_thread(console.store.use_link, token):
            return console.page(request, "error.html", 410, message="This link was already used.")
        done = await act(console, entry, claim.recipient, claim.action, "digest link")
    return console.page(request, "digest_link.html", entry=entry, claim=claim, done=done,
                        token=token)  # fmt: skip


async def mailbox_of(console: Console, request: Request) -> str | None:
    """The address this session is signed in as, if its server-side session is live."""
    sid, address = request.session.get("sid"), request.session.get("mailbox")
    if not sid or not address:
        return None
    owner = await asyncio.to_thread(console.store.session_user, str(sid))
    return str(address) if owner == f"mailbox:{address}" else None


async def my_quarantine(console: Console, request: Request) -> Response:
    """GET /my: the signed-in owner's held messages and allowed senders, or the sign-in form."""
    address = await mailbox_of(console, request)
    if address is None:
        request.session.setdefault("csrf", new_token())
        return console.page(request, "my_signin.html", sent="")
    return await my_page(console, request, address, "")


async def my_page(console: Console, request: Request, address: str, done: str) -> Response:
    entries = await asyncio.to_thread(console.quarantine.list, "held", 500, "", address)
    allowed = await asyncio.to_thread(console.store.sender_allows, address)
    return console.page(request, "my_quarantine.html", address=address, entries=entries,
                        allowed=sorted(allowed.get(address, ())), done=done)  # fmt: skip


async def my_signin_request(console: Console, request: Request) -> Response:
    """POST /my: mail a sign-in link to the address, if mail for it is held here.

    The answer is the same either way (no telling which addresses exist), and requests are
    limited per address and per client, so the page cannot be used to flood a mailbox.
    """
    form = await request.form()
    if not same_token(str(form.get("csrf", "")), request.session.get("csrf")):
        return console.page(request, "my_signin.html", 403, sent="Invalid form token: reload.")
    address = str(form.get("address", "")).strip().lower()[:320]
    if not ADDRESS.fullmatch(address):
        return console.page(request, "my_signin.html", 400, sent="Give your e-mail address.")
    ip = request.client.host if request.client else ""
    if SIGNIN_LIMIT.blocked(ip, address):
        return console.page(request, "my_signin.html", 429, sent="Too many requests: wait.")
    SIGNIN_LIMIT.failed(ip, address)  # every request counts, sent or not
    domains = console.settings.server.accept_domains
    held = accepted_domain(address, domains) and bool(
        await asyncio.to_thread(console.quarantine.list, None, 1, "", address)
    )
    if held:
        sender = f"quarantine@{console.settings.server.identity}"
        raw = signin_message(address, console.links, console.settings.web.public_url, sender)
        delivered = await deliver(console.backend, sender, [address], raw)
        await console.audit(request, "mailbox_signin_mailed", address,
                            backend_reply=str(delivered.reply))  # fmt: skip
    return console.page(request, "my_signin.html", sent=SIGNIN_SENT)


async def my_signin(console: Console, request: Request) -> Response:
    """/my/signin/TOKEN: GET asks, POST signs in (once) as the link's address."""
    token = request.path_params["token"]
    try:
        claim: LinkClaim = console.links.claim(token, actions=("signin",))
    except UnknownIdError as exc:
        return console.page(request, "error.html", 403, message=str(exc))
    if request.method == "GET":
        return console.page(request, "my_signin_link.html", claim=claim, token=token)
    if not await asyncio.to_thread(console.store.use_link, token):
        return console.page(request, "error.html", 410, message="This link was already used.")
    request.session.clear()  # a new session (no fixation), for this address only
    seconds = console.settings.web.session_hours * 3600
    sid = await asyncio.to_thread(console.store.start_session, f"mailbox:{claim.recipient}",
                                  seconds)  # fmt: skip
    request.session.update({"mailbox": claim.recipient, "sid": sid, "csrf": new_token()})
    return RedirectResponse("/my", 303)


async def my_action(console: Console, request: Request) -> Response:
    """POST /my/act: release, delete or allow one held message; forget an allowed sender;
    sign out. Only for the signed-in address, with the form token."""
    address = await mailbox_of(console, request)
    if address is None:
        return RedirectResponse("/my", 303)
    form = await request.form()
    if not same_token(str(form.get("csrf", "")), request.session.get("csrf")):
        return console.page(request, "error.html", 403, message="Invalid form token: reload.")
    what = str(form.get("what", ""))
    if what == "signout":
        await asyncio.to_thread(console.store.end_session, str(request.session.get("sid")))
        request.session.clear()
        return RedirectResponse("/my", 303)
    if what == "forget":
        sender = str(form.get("sender", ""))[:320]
        await asyncio.to_thread(console.store.forget_sender, address, sender)
        return await my_page(console, request, address, f"{sender} is no longer allowed.")
    if what not in ("release", "delete", "allow"):
        return console.page(request, "error.html", 400, message="No such action.")
    try:
        entry = await asyncio.to_thread(console.quarantine.get, str(form.get("id", "")))
    except UnknownIdError:
        entry = None
    if entry is None or not held_for(entry, address):
        return console.page(request, "error.html", 404, message="No such message held for you.")
    try:
        done = await act(console, entry, address, what, "mailbox page")
    except GatewayError as exc:
        done = f"Could not {what}: {exc}"
    return await my_page(console, request, address, done)
