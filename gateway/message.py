"""Parse a raw message once into the views every check needs (ParsedMessage)."""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from functools import cached_property

# Headers are split from the body at the first empty line (RFC 5322 2.1).
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


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
    that is neither a field nor a continuation (malformed).
    """
    fields: list[tuple[bytes | None, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields and fields[-1][0] is not None:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
            continue
        match = _HEADER_NAME.match(line)
        fields.append((match.group(1) if match else None, line))
    return fields


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


@dataclass(frozen=True)
class ParsedMessage:
    """A message parsed once; views are computed on first use and cached."""

    raw: bytes
    message: email.message.Message = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> ParsedMessage:
        """Parse bytes leniently: malformed input yields defects, never an exception."""
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        return cls(raw=raw, message=message)

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
        for count, part in enumerate(self.message.walk()):
            if count >= 1000:
                names.append("TooManyPartsToInspect")
                break
            names.extend(type(defect).__name__ for defect in part.defects)
        return tuple(names)
