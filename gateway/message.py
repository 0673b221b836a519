"""Parse a raw message once into the views every check needs (ParsedMessage)."""

from __future__ import annotations

import email
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from functools import cached_property

# Headers are split from the body at the first empty line (RFC 5322 2.1).
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def bare_line_endings(raw: bytes) -> tuple[int, int]:
    """(LFs without a CR before, CRs without an LF after): counted in C, not by a regex.

    A CRLF pair cannot overlap another, so every LF or CR not in one is bare.
    """
    pairs = raw.count(b"\r\n")
    return raw.count(b"\n") - pairs, raw.count(b"\r") - pairs


def crlf_line_ends(data: bytes) -> bytes:
    """A file with Unix line ends only (an ordinary .eml) as an MTA would send it, in CRLFs.

    Data with any CR keeps its bytes, bare LFs and all: that is evidence, not a file format.
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """Return (header block including its final line break, rest) of a raw message."""
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    # Keep the first line break with the headers; the blank line starts the body part.
    cut = match.start() + (2 if raw[match.start() : match.start() + 2] == b"\r\n" else 1)
    return raw[:cut], raw[cut:]


def iter_header_fields(block: bytes) -> list[tuple[bytes | None, bytes]]:
    """Split a header block into fields, folding continuation lines into their field.

    Each item is (name, full field bytes including folded lines); name is None for a line
    that is neither a field nor a continuation (malformed). Linear in the block: a field's
    lines are gathered in a list and joined once (one header folded over 40,000 lines must
    not cost a concatenation per line on the event loop).
    """
    fields: list[tuple[bytes | None, list[bytes]]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields and fields[-1][0] is not None:
            fields[-1][1].append(line)
            continue
        match = _HEADER_NAME.match(line)
        fields.append((match.group(1) if match else None, [line]))
    return [(name, lines[0] if len(lines) == 1 else b"".join(lines)) for name, lines in fields]


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words; malformed ones are kept as they came."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address of a header such as From."""

    display_name: str
    address: str

    @property
    def domain(self) -> str:
        """Lower-cased domain part, or '' when there is none."""
        return self.address.rpartition("@")[2].lower() if "@" in self.address else ""


@dataclass(frozen=True, slots=True)
class MimePart:
    """A leaf of the MIME tree, with what it declares about itself."""

    content_type: str
    filename: str
    disposition: str
    depth: int
    part: email.message.Message = field(repr=False, compare=False)

    def payload(self) -> bytes:
        """The decoded body (base64/QP undone leniently; garbage decodes to what it can)."""
        data = self.part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""

    @property
    def is_attachment(self) -> bool:
        """Named, marked as attachment, or not text: what a user would call an attachment."""
        return (
            bool(self.filename)
            or self.disposition == "attachment"
            or not (self.content_type.startswith("text/") or self.content_type == "message/rfc822")
        )


@dataclass(frozen=True, slots=True)
class MimeWalk:
    """The leaves of a bounded walk, and whether a bound cut it short."""

    parts: tuple[MimePart, ...]
    too_deep: bool
    too_many: bool


def _filename(part: email.message.Message) -> str:
    try:
        name = part.get_filename() or ""
    except (ValueError, LookupError, UnicodeError, TypeError):
        return ""
    return decode_header_value(name).strip()


@dataclass(frozen=True)
class ParsedMessage:
    """A message parsed once; views are computed on first use and cached."""

    raw: bytes
    message: email.message.Message = field(repr=False)
    # The stdlib parser recurses once per nested multipart: past Python's recursion limit
    # we keep the headers only and say the structure was too deep to parse.
    structure_too_deep: bool = False
    # Walks already done, by bounds: checks, features and rules ask for the same ones.
    _walks: dict[tuple[int, int], MimeWalk] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: bytes) -> ParsedMessage:
        """Parse bytes leniently: malformed input yields defects, never an exception."""
        try:
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
        except RecursionError:
            parser = email.parser.BytesParser(policy=email.policy.compat32)
            return cls(
                raw=raw, message=parser.parsebytes(raw, headersonly=True), structure_too_deep=True
            )
        return cls(raw=raw, message=message)

    def walk(self, max_depth: int = 20, max_parts: int = 1000) -> MimeWalk:
        """The leaf parts, iteratively (no recursion), stopping at the bounds (memoised)."""
        done = self._walks.get((max_depth, max_parts))
        if done is None:
            done = self._walks[(max_depth, max_parts)] = self._walk(max_depth, max_parts)
        return done

    def _walk(self, max_depth: int, max_parts: int) -> MimeWalk:
        leaves: list[MimePart] = []
        stack: list[tuple[email.message.Message, int]] = [(self.message, 0)]
        too_deep = self.structure_too_deep
        too_many = False
        seen = 0
        while stack:
            part, depth = stack.pop()
            seen += 1
            if seen > max_parts:
                too_many = True
                break
            children = part.get_payload() if part.is_multipart() else None
            if isinstance(children, list):
                if depth >= max_depth:
                    too_deep = True
                    continue
                stack.extend(
                    (child, depth + 1)
                    for child in reversed(children)
                    if isinstance(child, email.message.Message)
                )
                continue
            leaves.append(
                MimePart(
                    content_type=part.get_content_type().lower(),
                    filename=_filename(part),
                    disposition=(part.get_content_disposition() or "").lower(),
                    depth=depth,
                    part=part,
                )
            )
        return MimeWalk(tuple(leaves), too_deep, too_many)

    @cached_property
    def header_block(self) -> bytes:
        """The raw header block (up to and including the line before the blank line)."""
        return split_header_block(self.raw)[0]

    def header(self, name: str) -> str | None:
        """First value of a header (undecoded), or None."""
        value = self.message.get(name)
        return None if value is None else str(value)

    def headers(self, name: str) -> list[str]:
        """Every value of a header (undecoded)."""
        return [str(v) for v in self.message.get_all(name, [])]

    @cached_property
    def subject(self) -> str:
        """The decoded Subject, '' when absent."""
        value = self.header("Subject")
        return decode_header_value(value).strip() if value else ""

    @cached_property
    def message_id(self) -> str:
        """The Message-ID as sent, '' when absent."""
        return (self.header("Message-ID") or "").strip()

    @cached_property
    def from_mailboxes(self) -> tuple[Mailbox, ...]:
        """Addresses of every From header (RFC 5322 3.6.2)."""
        values = self.headers("From")
        pairs = email.utils.getaddresses(values)
        return tuple(
            Mailbox(decode_header_value(name), addr) for name, addr in pairs if name or addr
        )

    @cached_property
    def defects(self) -> tuple[str, ...]:
        """Names of the parser's defects across the MIME tree (bounded walk)."""
        names: list[str] = []
        stack = [self.message]
        for _ in range(1000):
            if not stack:
                break
            part = stack.pop()
            names.extend(type(defect).__name__ for defect in part.defects)
            children = part.get_payload() if part.is_multipart() else None
            if isinstance(children, list):
                stack.extend(c for c in children if isinstance(c, email.message.Message))
        return tuple(names)
