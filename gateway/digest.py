"""Quarantine digests: each mailbox owner hears what is held for them, and decides.

A digest lists a recipient's held messages with two links each, release and delete. A link
is the whole credential: signed with the console's key (itsdangerous), naming one message,
one recipient and one action, expiring after ``[web] digest_link_hours``, and working once.
It opens a page that asks before acting (mail scanners fetch links; a GET changes nothing);
a release delivers to that recipient only and labels the message ham by them.
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

ACTIONS = ("release", "delete")


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

    def claim(self, token: str) -> LinkClaim:
        """The link's claim; UnknownIdError when forged, changed or expired."""
        try:
            message_id, recipient, action = self.serializer.loads(token, max_age=self.max_age)
        except SignatureExpired as exc:
            raise UnknownIdError("this link has expired; ask for a new digest") from exc
        except (BadSignature, ValueError, TypeError) as exc:
            raise UnknownIdError("this link is not valid") from exc
        if action not in ACTIONS:
            raise UnknownIdError("this link is not valid")
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
    """The digest for one recipient: text and HTML, each held message with its two links."""
    base = base_url.rstrip("/")
    rows = []
    for entry in entries:
        links = {a: f"{base}/q/{signer.token(entry.id, recipient, a)}" for a in ACTIONS}
        when = email.utils.formatdate(entry.time, usegmt=True)
        rows.append((entry, when, links))
    text = [f"{len(rows)} message(s) for {recipient} are held in quarantine.", ""]
    for entry, when, links in rows:
        text += [
            f"- {entry.subject or '(no subject)'}",
            f"  from {entry.mail_from or '<>'}, {when}",
            f"  release: {links['release']}",
            f"  delete:  {links['delete']}",
            "",
        ]
    html = [f"<p>{len(rows)} message(s) for {escape(recipient)} are held in quarantine.</p><ul>"]
    for entry, when, links in rows:
        html.append(
            f"<li><b>{escape(entry.subject or '(no subject)')}</b> from "
            f"{escape(entry.mail_from or '<>')}, {escape(when)}: "
            f'<a href="{escape(links["release"])}">release</a> · '
            f'<a href="{escape(links["delete"])}">delete</a></li>'
        )
    html.append("</ul><p>Each link works once, for a few days.</p>")
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = f"{len(rows)} message(s) held for you"
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    mail.set_content("\n".join(text))
    mail.add_alternative("".join(html), subtype="html")
    return mail.as_bytes(policy=email.policy.SMTP)
