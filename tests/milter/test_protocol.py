"""The milter protocol driven by clients other than Postfix.

- Debian's `miltertest` (OpenDKIM's independent milter client, a Lua script per test) checks
  negotiation and the end-of-message actions as another implementation reads them.
- A small client in this file makes the faults Postfix never sends (a packet past the limit,
  an unknown command, an end of message without a message, garbage): a fake peer, because a
  real MTA cannot be made to misbehave this way; each fault must close that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator

import pytest

from gateway.config import load_settings
from gateway.events import EventFilter
from gateway.milter import protocol as p
from gateway.milter.server import MilterServer
from gateway.service import Gateway
from tests.conftest import free_port


@contextlib.asynccontextmanager
async def milter(config_factory, **sections) -> AsyncIterator[tuple[Gateway, int]]:
    port = free_port()
    server = {"listen": "", **sections.pop("server", {})}
    config = config_factory(None, server=server, milter={"listen": f"127.0.0.1:{port}"}, **sections)
    gateway = Gateway(load_settings(config), config)
    front = MilterServer(gateway)
    await front.start()
    try:
        yield gateway, port
    finally:
        await front.drain(1.0)
        await gateway.aclose()


class Client:
    """Speaks the MTA's side of the protocol, one packet at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, command: bytes, data: bytes = b"") -> None:
        self.writer.write(struct.pack(">I", len(data) + 1) + command + data)
        await self.writer.drain()

    async def reply(self) -> tuple[bytes, bytes]:
        length = struct.unpack(">I", await self.reader.readexactly(4))[0]
        body = await self.reader.readexactly(length)
        return body[:1], body[1:]

    async def negotiate(self, protocol: int = 0) -> tuple[bytes, bytes]:
        await self.send(p.SMFIC_OPTNEG, struct.pack(">III", 6, 0x1FF, protocol))
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def closed(self) -> bool:
        try:
            async with asyncio.timeout(5):
                return await self.reader.read() == b""
        except ConnectionError:
            return True

    async def message(self, headers: list[tuple[str, str]], body: bytes) -> list[bytes]:
        """A whole transaction; the replies to the end of message."""
        for command, data in (
            (p.SMFIC_CONNECT, b"client.test\x004\x00\x19192.0.2.7\x00"),
            (p.SMFIC_HELO, b"client.test\x00"),
            (p.SMFIC_MAIL, b"<a@sender.test>\x00"),
            (p.SMFIC_RCPT, b"<bob@example.test>\x00"),
        ):
            await self.send(command, data)
            assert (await self.reply())[0] == p.SMFIR_CONTINUE
        for name, value in headers:
            await self.send(p.SMFIC_HEADER, name.encode() + b"\0" + value.encode() + b"\0")
            assert (await self.reply())[0] == p.SMFIR_CONTINUE
        await self.send(p.SMFIC_EOH)
        assert (await self.reply())[0] == p.SMFIR_CONTINUE
        await self.send(p.SMFIC_BODY, body)
        assert (await self.reply())[0] == p.SMFIR_CONTINUE
        await self.send(p.SMFIC_BODYEOB)
        replies = []
        while True:
            code, data = await self.reply()
            replies.append(code + data)
            if code in (p.SMFIR_ACCEPT, p.SMFIR_CONTINUE, p.SMFIR_REPLYCODE, p.SMFIR_DISCARD,
                        p.SMFIR_REJECT, p.SMFIR_TEMPFAIL):  # fmt: skip
                return replies


HEADERS = [
    ("From", "alice@sender.test"),
    ("To", "bob@example.test"),
    ("Subject", "hello"),
    ("Date", "Sat, 21 Nov 2026 10:00:00 +0000"),
    ("Message-ID", "<m@sender.test>"),
]


async def test_negotiation_asks_for_what_we_need_and_no_more(config_factory):
    async with milter(config_factory) as (_, port):
        client = await Client.open(port)
        offered = p.SMFIP_NR_HDR | p.SMFIP_NR_BODY | p.SMFIP_HDR_LEADSPC | 0x1  # + NOCONNECT
        code, data = await client.negotiate(offered)
        assert code == p.SMFIC_OPTNEG
        version, actions, protocol = struct.unpack(">III", data[:12])
        assert version == 6
        assert (
            actions == p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE | p.SMFIF_SETSYMLIST
        )
        assert protocol == p.SMFIP_NR_HDR | p.SMFIP_NR_BODY | p.SMFIP_HDR_LEADSPC  # never NOCONNECT
        assert b"{client_addr}" in data[12:]  # the macro list for the connect stage
        await client.close()


async def test_a_message_through_the_protocol_gets_our_headers(config_factory):
    async with milter(config_factory) as (gateway, port):
        client = await Client.open(port)
        await client.negotiate()
        replies = await client.message([*HEADERS, ("X-Mailmoat-Action", "accept")], b"Hi.\r\n")
        assert replies[-1] == p.SMFIR_ACCEPT
        assert replies[0].startswith(p.SMFIR_CHGHEADER + struct.pack(">I", 1))  # forged one
        inserted = [r for r in replies if r[:1] == p.SMFIR_INSHEADER]
        assert any(b"X-Mailmoat-Action\x00accept\x00" in r for r in inserted)
        await client.close()
        [event] = gateway.store.list(EventFilter(kind="message", limit=10))
        assert (event.client_ip, event.helo, event.subject) == ("192.0.2.7", "client.test", "hello")


async def test_over_the_size_limit_is_552_and_nothing_is_kept(config_factory):
    async with milter(config_factory, server={"max_message_size": 10_000}) as (gateway, port):
        client = await Client.open(port)
        await client.negotiate()
        replies = await client.message(HEADERS, b"x" * 70_000)
        assert replies == [p.SMFIR_REPLYCODE + b"552 5.3.4 Message size exceeds the limit of "
                           b"10000 bytes\x00"]  # fmt: skip
        await client.close()
        assert gateway.store.list(EventFilter(kind="message", limit=10)) == []


@pytest.mark.parametrize(
    "fault",
    ["packet too long", "unknown command", "end of message without a message", "zero length"],
)
async def test_protocol_faults_close_that_connection_only(config_factory, fault):
    async with milter(config_factory) as (_, port):
        bad = await Client.open(port)
        await bad.negotiate()
        if fault == "packet too long":
            bad.writer.write(struct.pack(">I", p.MAX_PACKET + 1) + b"B")
        elif fault == "unknown command":
            await bad.send(b"Z", b"whatever")
        elif fault == "end of message without a message":
            await bad.send(p.SMFIC_BODYEOB)
        else:
            bad.writer.write(struct.pack(">I", 0))
        await bad.writer.drain()
        assert await bad.closed()
        await bad.close()
        good = await Client.open(port)  # the service keeps running
        await good.negotiate()
        assert (await good.message(HEADERS, b"fine\r\n"))[-1] == p.SMFIR_ACCEPT
        await good.close()


MILTERTEST_SCRIPT = """
conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
if mt.conninfo(conn, "client.test", "192.0.2.9") ~= nil then error("conninfo") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("conninfo reply") end
mt.helo(conn, "client.test")
mt.mailfrom(conn, "<a@sender.test>")
mt.rcptto(conn, "<bob@example.test>")
mt.header(conn, "From", "alice@sender.test")
mt.header(conn, "To", "bob@example.test")
mt.header(conn, "Subject", "through miltertest")
mt.header(conn, "X-Mailmoat-Action", "forged")
mt.eoh(conn)
mt.bodystring(conn, "Hello from miltertest.\\r\\n")
mt.eom(conn)
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Mailmoat-Action") then error("no header") end
if not mt.eom_check(conn, MT_HDRCHANGE, "X-Mailmoat-Action", "") then
  if not mt.eom_check(conn, MT_HDRDELETE, "X-Mailmoat-Action") then error("forgery kept") end
end
mt.disconnect(conn)
"""


@pytest.mark.skipif(shutil.which("miltertest") is None, reason="needs Debian's miltertest")
async def test_miltertest_an_independent_client_agrees(config_factory, tmp_path):
    async with milter(config_factory) as (gateway, port):
        script = tmp_path / "accept.lua"
        script.write_text(MILTERTEST_SCRIPT.format(port=port))
        result = await asyncio.to_thread(
            subprocess.run, ["miltertest", "-s", str(script)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        [event] = gateway.store.list(EventFilter(kind="message", limit=10))
        assert event.subject == "through miltertest"


@pytest.mark.parametrize("where", ["tcp", "unix"])
async def test_mailmoat_serve_runs_the_milter_in_its_workers(config_factory, tmp_path, where):
    """`mailmoat serve` with [server] listen = "" and two workers sharing the milter socket."""
    from tests.smtp.test_lifecycle import log_of, start_process

    port = free_port()
    listen = f"127.0.0.1:{port}" if where == "tcp" else f"unix:{tmp_path / 'milter.sock'}"
    config = config_factory(
        None, server={"listen": "", "workers": 2}, milter={"listen": listen, "socket_mode": "0600"}
    )
    proc = await start_process(config)
    try:
        async with asyncio.timeout(30):
            while True:  # both workers listening
                if log_of(config).read_text().count("milter listening on") == 2:
                    break
                await asyncio.sleep(0.1)
        if where == "unix":
            sock = tmp_path / "milter.sock"
            assert oct(sock.stat().st_mode & 0o777) == "0o600"
            client = Client(*await asyncio.open_unix_connection(str(sock)))
        else:
            client = await Client.open(port)
        await client.negotiate()
        assert (await client.message(HEADERS, b"through the workers\r\n"))[-1] == p.SMFIR_ACCEPT
        await client.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
