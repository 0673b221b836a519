"""The milter wire protocol (version 6, Sendmail 8.14+ and Postfix 2.6+), bytes only.

Every packet is a 4-byte big-endian length (the command byte included), one command byte
and its data; strings are NUL-terminated. The MTA is the client: it sends commands (SMFIC_*),
the filter answers with replies (SMFIR_*). The constants are those of libmilter's
``mfdef.h``; the behaviour follows Postfix's MILTER_README where the two differ.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from gateway.errors import GatewayError

VERSION = 6

# Commands from the MTA.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies from the filter.
SMFIR_ACCEPT = b"a"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Actions the filter may take (SMFIF_*).
SMFIF_ADDHDRS = 0x01
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_SETSYMLIST = 0x100

# Protocol steps (SMFIP_*): what the MTA may leave out or not wait a reply for.
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_NR_HDR = 0x80
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000

# Macro stages for the symbol list (SMFIM_*).
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

# The largest packet we read: Postfix sends body chunks of at most 65,535 bytes, headers and
# macros are far smaller; anything bigger is not a milter client we can trust.
MAX_PACKET = 1 << 20


class MilterProtocolError(GatewayError):
    """A packet that breaks the protocol: the connection is closed (the MTA applies its
    milter_default_action)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One command from the MTA."""

    command: bytes
    data: bytes


async def read_packet(reader: asyncio.StreamReader) -> Packet | None:
    """The next packet, or None when the MTA closed the connection between packets."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise MilterProtocolError("connection closed inside a packet length") from exc
    (length,) = struct.unpack(">I", head)
    if length < 1 or length > MAX_PACKET:
        raise MilterProtocolError(f"packet length {length} outside 1..{MAX_PACKET}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise MilterProtocolError("connection closed inside a packet") from exc
    return Packet(body[:1], body[1:])


def packet(reply: bytes, data: bytes = b"") -> bytes:
    """One reply packet."""
    return struct.pack(">I", len(data) + 1) + reply + data


def cstrings(data: bytes) -> list[str]:
    """NUL-terminated strings (UTF-8, undecodable bytes kept as surrogates)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def cstr(text: str) -> bytes:
    """A NUL-terminated string; an embedded NUL would cut it, so it is dropped."""
    return text.replace("\0", "").encode("utf-8", "surrogateescape") + b"\0"


def macros(data: bytes) -> tuple[str, dict[str, str]]:
    """SMFIC_MACRO: the command it is for, and name -> value (braces kept: '{daemon_name}')."""
    if not data:
        raise MilterProtocolError("empty macro packet")
    strings = cstrings(data[1:])
    pairs = dict(zip(strings[0::2], strings[1::2], strict=False))
    return data[:1].decode("ascii", "replace"), pairs


@dataclass(frozen=True, slots=True)
class Options:
    """What the MTA offers in SMFIC_OPTNEG: version, actions, protocol steps."""

    version: int
    actions: int
    protocol: int


def parse_options(data: bytes) -> Options:
    """SMFIC_OPTNEG's three 32-bit words."""
    if len(data) < 12:
        raise MilterProtocolError(f"option negotiation of {len(data)} bytes, expected 12")
    version, actions, protocol = struct.unpack(">III", data[:12])
    return Options(version, actions, protocol)


def negotiate(offer: Options, symbols: dict[int, str]) -> tuple[bytes, int]:
    """Our answer to SMFIC_OPTNEG and the protocol flags both sides then use.

    We add and change headers and may ask for a hold (quarantine); we want headers with their
    leading space (exact bytes for DKIM), and no reply is waited for per header, body chunk,
    unknown command, DATA or end of headers where the MTA allows it (fewer round trips).
    The macros we need are asked for per stage when the MTA can take a symbol list.
    """
    if offer.version < 2:
        raise MilterProtocolError(f"milter protocol version {offer.version} is too old")
    wanted_actions = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_SETSYMLIST
    actions = wanted_actions & offer.actions
    wanted = (
        SMFIP_HDR_LEADSPC | SMFIP_NR_HDR | SMFIP_NR_BODY | SMFIP_NR_UNKN | SMFIP_NR_DATA
        | SMFIP_NR_EOH | SMFIP_NODATA | SMFIP_NOUNKNOWN
    )  # fmt: skip
    protocol = wanted & offer.protocol
    data = struct.pack(">III", min(offer.version, VERSION), actions, protocol)
    if actions & SMFIF_SETSYMLIST:
        for stage, names in sorted(symbols.items()):
            data += struct.pack(">I", stage) + names.encode("ascii") + b"\0"
    return packet(SMFIC_OPTNEG, data), protocol


def connect_info(data: bytes) -> tuple[str, str, int]:
    """SMFIC_CONNECT: (client host name, address, port); address '' for a local client."""
    host, _, rest = data.partition(b"\0")
    name = host.decode("utf-8", "replace")
    if not rest:
        return name, "", 0
    family = rest[:1]
    if family not in (b"4", b"6") or len(rest) < 3:
        return name, "", 0  # 'U' unknown, 'L' a unix socket: no address to speak of
    (port,) = struct.unpack(">H", rest[1:3])
    address = rest[3:].split(b"\0", 1)[0].decode("ascii", "replace")
    if family == b"6" and address.lower().startswith("ipv6:"):
        address = address[5:]
    return name, address, port


def reply_code(reply: str) -> bytes:
    """SMFIR_REPLYCODE for a 4xx/5xx SMTP reply (multi-line kept, as libmilter does)."""
    return packet(SMFIR_REPLYCODE, cstr(reply))


def header_change(reply: bytes, index: int, name: str, value: str) -> bytes:
    """SMFIR_INSHEADER / SMFIR_CHGHEADER: index, name, value ('' deletes for CHGHEADER)."""
    return packet(reply, struct.pack(">I", index) + cstr(name) + cstr(value))
