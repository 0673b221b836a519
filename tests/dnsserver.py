"""A small authoritative DNS server on loopback (UDP and TCP) serving the tests' own zones.

Real packets, parsed and built with dnspython. Names can be made to misbehave:
``servfail`` answers SERVFAIL, ``drop`` never answers (a timeout for the client).
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def txt(value: str) -> str:
    """A TXT rdata text for a long value, split into 255-octet strings (RFC 7208 3.3)."""
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


@dataclass
class Zone:
    """Records by (name, type); names are absolute and lower-case."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    drop: set[str] = field(default_factory=set)

    def add(self, name: str, rdtype: str, *values: str) -> Zone:
        key = (name.lower().rstrip(".") + ".", rdtype.upper())
        self.records.setdefault(key, []).extend(values)
        return self

    def names(self) -> set[str]:
        return {name for name, _ in self.records}


class DnsServer:
    """Serve a Zone on 127.0.0.1 (same port for UDP and TCP); counts the queries it gets."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: Counter[tuple[str, str]] = Counter()
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        # Bind TCP first on a free port, then UDP on the same number.
        self.tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", 0)
        self.port = self.tcp.sockets[0].getsockname()[1]
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                reply = server.answer(data, max_size=512)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
        return self

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = struct.unpack(">H", await reader.readexactly(2))[0]
            reply = self.answer(await reader.readexactly(size), max_size=65535)
            if reply is not None:
                writer.write(struct.pack(">H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, wire: bytes, max_size: int) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        if name in self.zone.drop:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.zone.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        values = self.zone.records.get((name, rdtype))
        if values:
            rrset = dns.rrset.from_text_list(question.name, 300, "IN", rdtype, values)
            response.answer.append(rrset)
        elif name not in self.zone.names():
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire_reply = response.to_wire()
        if len(wire_reply) > max_size:
            # Too big for UDP: an empty truncated answer tells the client to retry over TCP.
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()
        return wire_reply
