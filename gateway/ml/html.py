"""One pass over an HTML part: visible text, links, anchors, and what the markup hides.

The model reads the visible text; the heuristics check reads what spam does with markup
(text hidden by style, text in tiny fonts, links whose text names another domain, forms and
scripts in a message body). Both come from the same pass so the HTML is parsed once.
Hostile markup is tolerated: unclosed tags, end tags without a start, deep nesting (the
open-element stack is bounded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

MAX_STACK = 200  # open elements tracked; deeper ones take the style of the 200th
MAX_ANCHOR_TEXT = 200  # characters of an anchor's text kept for comparison with its href
_VOID = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
))  # fmt: skip
_NOTABLE = frozenset(("img", "form", "iframe", "table", "font", "a", "input"))
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:\.0*)?(?:px|pt|em|%)?\s*(?:;|$|!)"
    r"|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$|!)|max-height\s*:\s*0(?:px)?\s*(?:;|$|!)",
    re.IGNORECASE,
)
_TINY_STYLE = re.compile(r"font-size\s*:\s*(?:[12](?:\.\d+)?|0?\.\d+)\s*(?:px|pt)", re.IGNORECASE)


@dataclass(slots=True)
class HtmlDoc:
    """What one HTML part shows and hides."""

    text: str = ""
    links: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    # (href, visible text) of each link, in order
    anchors: list[tuple[str, str]] = field(default_factory=list)
    hidden_chars: int = 0  # visible-looking characters in display:none and the like
    tiny_chars: int = 0  # characters in a 1-2 px/pt font
    scripts: int = 0
    password_fields: int = 0  # <input type="password">


class HtmlReader(HTMLParser):
    """Collects an HtmlDoc; scripts and styles are skipped, styles of open elements tracked."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doc = HtmlDoc()
        self.chunks: list[str] = []
        self._skip = 0
        # open elements: (tag, hidden, tiny)
        self._stack: list[tuple[str, bool, bool]] = []
        self._open: dict[str, int] = {}  # tag -> open count, so a stray end tag costs O(1)
        self._anchor: tuple[str, list[str]] | None = None  # (href, text pieces) of an open <a>
        self._anchor_chars = 0

    def _state(self) -> tuple[bool, bool]:
        return self._stack[-1][1:] if self._stack else (False, False)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
            self.doc.scripts += int(tag == "script")
        if tag in _NOTABLE:
            self.doc.tags.append(tag)
        href = ""
        style = ""
        hidden_attr = False
        for name, value in attrs:
            if name == "hidden":
                hidden_attr = True
            if not value:
                continue
            if name in ("href", "src", "action"):
                self.doc.links.append(value)
                if name == "href" and tag == "a":
                    href = value
            elif name == "style":
                style = value
            elif name == "size" and tag == "font" and value.strip() == "0":
                hidden_attr = True
        if tag == "input" and any(
            n == "type" and (v or "").strip().lower() == "password" for n, v in attrs
        ):
            self.doc.password_fields += 1
        if tag == "a":
            self._close_anchor()
            self._anchor = (href, []) if href else None
            self._anchor_chars = 0
        if tag in _VOID:
            return
        hidden, tiny = self._state()
        hidden = hidden or hidden_attr or bool(style and _HIDDEN_STYLE.search(style))
        tiny = tiny or bool(style and _TINY_STYLE.search(style))
        if len(self._stack) < MAX_STACK:
            self._stack.append((tag, hidden, tiny))
            self._open[tag] = self._open.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag == "a":
            self._close_anchor()
        # Pop to the matching element (each pop pays for its push); an end tag with no open
        # match is ignored.
        if self._open.get(tag):
            while self._stack:
                popped = self._stack.pop()[0]
                self._open[popped] -= 1
                if popped == tag:
                    break

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        hidden, tiny = self._state()
        if hidden:
            self.doc.hidden_chars += len(data) - data.count(" ") - data.count("\n")
            return
        if tiny:
            self.doc.tiny_chars += len(data) - data.count(" ") - data.count("\n")
        self.chunks.append(data)
        if self._anchor is not None and self._anchor_chars < MAX_ANCHOR_TEXT:
            self._anchor[1].append(data)
            self._anchor_chars += len(data)

    def _close_anchor(self) -> None:
        if self._anchor is not None:
            href, text = self._anchor
            self.doc.anchors.append((href, " ".join("".join(text).split())[:MAX_ANCHOR_TEXT]))
            self._anchor = None


def read_html(markup: str) -> HtmlDoc:
    """The HtmlDoc of ``markup``; malformed markup is tolerated."""
    reader = HtmlReader()
    try:
        reader.feed(markup)
        reader.close()
    except (AssertionError, ValueError):  # HTMLParser on hostile input
        pass
    reader._close_anchor()
    reader.doc.text = " ".join(reader.chunks)
    return reader.doc
