"""Builders for the hostile and clean messages tests send (made on the fly, not stored)."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP


def base(subject: str = "Documents", body: str = "Please see attached.\n") -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = "bob@example.test"
    msg["Subject"] = subject
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<att@sender.test>"
    msg.set_content(body)
    return msg


def with_attachments(*files: tuple[str, bytes, str], subject: str = "Documents") -> bytes:
    """A message with (filename, bytes, declared content type) attachments, base64-encoded."""
    msg = base(subject)
    for filename, data, ctype in files:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def plain(body: str, subject: str = "Plain") -> bytes:
    return base(subject, body).as_bytes()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
