"""What a held message is, for the people deciding to release it: not raw MIME and base64.

Headers decoded, the text (plain, or HTML as text), every attachment with its declared and
true type, size and sha256, archive members, and every link with where it really goes
(an anchor whose text names another host than its href is the classic phishing trick).
Bounded: so many parts, members and links, so much text.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

import magic

from gateway.archives import ArchiveLimits, inspect_zip, is_zip
from gateway.message import ParsedMessage, decode_header_value

MAX_TEXT = 20_000
MAX_PARTS = 50
MAX_LINKS = 100
_MAGIC = magic.Magic(mime=True)
_MAGIC_LOCK = threading.Lock()  # one libmagic cookie is not safe across threads


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    declared: str
    true_type: str
    size: int
    sha256: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    text: str
    host: str
    misleading: bool  # the text names another host than the href goes to


@dataclass
class MessageView:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


class _Anchors(HTMLParser):
    """<a href> with the text inside, bounded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._href: str | None = None
        self._words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and len(self.links) < MAX_LINKS:
            self._href = dict(attrs).get("href") or ""
            self._words = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join("".join(self._words).split())))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._words.append(data)
        if sum(map(len, self.text)) < MAX_TEXT:
            self.text.append(data)


def _host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _named_host(text: str) -> str:
    """A host the link's text shows ('www.bank.example', 'https://bank.example/login')."""
    word = text.strip().split(" ")[0] if text.strip() else ""
    if "." not in word or " " in text.strip():
        return ""
    return _host(word if "://" in word else f"http://{word}")


def describe(raw: bytes) -> MessageView:
    """The view of one message (parsed leniently, bounded)."""
    parsed = ParsedMessage.parse(raw)
    view = MessageView()
    for name, value in parsed.message.items()[:100]:
        view.headers.append((str(name), decode_header_value(str(value))[:2000]))
    texts: list[str] = []
    for part in parsed.walk(20, MAX_PARTS).parts:
        data = part.payload()
        if part.is_attachment:
            with _MAGIC_LOCK:
                true_type = str(_MAGIC.from_buffer(data[:65536])).lower() if data else "empty"
            members: tuple[str, ...] = ()
            if is_zip(data):
                report = inspect_zip(data, part.filename or "archive", ArchiveLimits())
                members = tuple(m.path for m in report.members[:100])
            digest = hashlib.sha256(data).hexdigest()
            name = part.filename or "(unnamed)"
            view.attachments.append(
                Attachment(name, part.content_type, true_type, len(data), digest, members)
            )
            continue
        charset = part.part.get_content_charset() or "utf-8"
        try:
            decoded = data.decode(charset, "replace")
        except LookupError:
            decoded = data.decode("utf-8", "replace")
        if part.content_type == "text/html":
            anchors = _Anchors()
            anchors.feed(decoded[: 4 * MAX_TEXT])
            for href, text in anchors.links:
                host, shown = _host(href), _named_host(text)
                view.links.append(Link(href[:500], text[:200], host, bool(shown and shown != host)))
            texts.append("".join(anchors.text))
        else:
            texts.append(decoded)
    view.text = "\n".join(texts)[:MAX_TEXT]
    return view
