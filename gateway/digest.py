"""Quarantine digests: each mailbox owner hears what is held for them, and decides.

A digest lists a recipient's held messages with three links each: release, delete, and
always allow the sender. A link is the whole credential: signed with the console's key
(itsdangerous), naming one message, one recipient and one action, expiring after
``[web] digest_link_hours``, and working once. It opens a page that asks before acting (mail
scanners fetch links; a GET changes nothing); a release delivers to that recipient only and
labels the message ham by them; an allow also releases it. The digest ends with a sign-in
link to the recipient's own quarantine page (gateway.web.mailbox), scoped to that address.
"""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from gateway.errors import UnknownIdError
from gateway.quarantine import Quarantine, QuarantineEntry

# What a link may do to one held message, and the sign-in link (no message).
MESSAGE_ACTIONS = ("release", "delete", "allow")
ACTIONS = (*MESSAGE_ACTIONS, "signin")
LINK_WORDS = {"release": "release", "delete": "delete", "allow": "always allow sender"}


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a valid link allows: one action on one message for one recipient."""

    message_id: str
    recipient: str
    action: str


class LinkSigner:
    """Signs and checks digest links with the console's secret key."""

    def __init__(self, secret: str, max_age_hours: float) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="mailmoat-digest-link")
        self.max_age = max(1, int(max_age_hours * 3600))

    def token(self, message_id: str, recipient: str, action: str) -> str:
        return self.serializer.dumps([message_id, recipient.lower(), action])

    def signin_token(self, recipient: str) -> str:
        """A link that opens the recipient's own quarantine page."""
        return self.token("", recipient, "signin")

    def claim(self, token: str, actions: Sequence[str] = MESSAGE_ACTIONS) -> LinkClaim:
        """The link's claim, for one of ``actions``; UnknownIdError when forged or expired."""
        try:
            message_id, recipient, action = self.serializer.loads(token, max_age=self.max_age)
        except SignatureExpired as exc:
            raise UnknownIdError("this link has expired; ask for a new digest") from exc
        except (BadSignature, ValueError, TypeError) as exc:
            raise UnknownIdError("this link is not valid") from exc
        if action not in actions:
            raise UnknownIdError("this link is not valid here")
        return LinkClaim(str(message_id), str(recipient), str(action))


def held_by_recipient(quarantine: Quarantine, since: float) -> dict[str, list[QuarantineEntry]]:
    """Held messages since ``since``, grouped by recipient (lower-cased)."""
    grouped: dict[str, list[QuarantineEntry]] = {}
    for entry in quarantine.list("held", 10_000):
        if entry.time < since:
            continue
        for rcpt in entry.rcpts:
            grouped.setdefault(rcpt.lower(), []).append(entry)
    return grouped


def digest_message(
    recipient: str,
    entries: Sequence[QuarantineEntry],
    signer: LinkSigner,
    base_url: str,
    sender: str,
) -> bytes:
    """The digest for one recipient: text and HTML, each held message with its links.

    A message with no envelope sender (a bounce) gets no "always allow" link.
    """
    base = base_url.rstrip("/")
    rows = []
    for entry in entries:
        actions = MESSAGE_ACTIONS if entry.mail_from else ("release", "delete")
        links = {a: f"{base}/q/{signer.token(entry.id, recipient, a)}" for a in actions}
        when = email.utils.formatdate(entry.time, usegmt=True)
        rows.append((entry, when, links))
    signin = f"{base}/my/signin/{signer.signin_token(recipient)}"
    text = [f"{len(rows)} message(s) for {recipient} are held in quarantine.", ""]
    for entry, when, links in rows:
        text += [
            f"- {entry.subject or '(no subject)'}",
            f"  from {entry.mail_from or '<>'}, {when}",
        ]
        text += [f"  {LINK_WORDS[a]}: {link}" for a, link in links.items()]
        text.append("")
    text.append(f"All your held messages: {signin}")
    html = [f"<p>{len(rows)} message(s) for {escape(recipient)} are held in quarantine.</p><ul>"]
    for entry, when, links in rows:
        anchors = " · ".join(
            f'<a href="{escape(link)}">{LINK_WORDS[a]}</a>' for a, link in links.items()
        )
        html.append(
            f"<li><b>{escape(entry.subject or '(no subject)')}</b> from "
            f"{escape(entry.mail_from or '<>')}, {escape(when)}: {anchors}</li>"
        )
    html.append(f'</ul><p><a href="{escape(signin)}">All your held messages</a>.</p>')
    html.append("<p>Each link works once, for a few days.</p>")
    return notice(recipient, sender, f"{len(rows)} message(s) held for you", text, html)


def signin_message(recipient: str, signer: LinkSigner, base_url: str, sender: str) -> bytes:
    """The mail that answers a sign-in request on /my: one link to the recipient's page."""
    link = f"{base_url.rstrip('/')}/my/signin/{signer.signin_token(recipient)}"
    text = [
        f"Someone (we hope you) asked to see the quarantine of {recipient}.",
        f"Open your held messages: {link}",
        "",
        "The link works once, for a few days. If you did not ask, ignore this message.",
    ]
    html = [f'<p>Open <a href="{escape(link)}">the held messages of {escape(recipient)}</a>.</p>',
            "<p>The link works once. If you did not ask, ignore this message.</p>"]  # fmt: skip
    return notice(recipient, sender, "Your quarantine", text, html)


def notice(recipient: str, sender: str, subject: str, text: list[str], html: list[str]) -> bytes:
    """A small text + HTML message from the quarantine to one recipient."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = subject
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    mail.set_content("\n".join(text))
    mail.add_alternative("".join(html), subtype="html")
    return mail.as_bytes(policy=email.policy.SMTP)
