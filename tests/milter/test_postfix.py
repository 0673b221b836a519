"""The milter front behind Debian's real Postfix, started by the tests on loopback.

Postfix listens on a free port with ``smtpd_milters = inet:127.0.0.1:PORT``,
``milter_protocol = 6`` and ``milter_default_action = tempfail``, and relays to the test's
SMTP sink; a second smtpd without milters is where Mailmoat releases quarantined mail to.
Clients are real SMTP clients (aiosmtplib, smtplib) talking to Postfix.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from gateway.config import load_settings
from gateway.events import EventFilter
from gateway.milter.server import MilterServer
from gateway.service import Gateway
from tests import authdata
from tests.clamav import EICAR
from tests.conftest import free_port, message
from tests.hostile.test_decision_layer import attached, zip_of
from tests.postfix import PostfixInstance, available, snippet

pytestmark = pytest.mark.skipif(not available(), reason="needs Debian's postfix, run as root")


class Stack:
    """Postfix in front, Mailmoat as its milter, the sink behind."""

    def __init__(self, gateway: Gateway, milter: MilterServer, postfix: PostfixInstance) -> None:
        self.gateway = gateway
        self.milter = milter
        self.postfix = postfix

    @property
    def port(self) -> int:
        return self.postfix.port

    def events(self, **filters) -> list:
        return self.gateway.store.list(EventFilter(limit=1000, **filters))


@contextlib.asynccontextmanager
async def milter_stack(sink, config_factory, **sections) -> AsyncIterator[Stack]:
    milter_port, port, reinject = free_port(), free_port(), free_port()
    milter = {"listen": f"127.0.0.1:{milter_port}", **sections.pop("milter", {})}
    config = config_factory(
        None,
        server={"listen": ""},
        milter=milter,
        backend={"kind": "smtp", "host": "127.0.0.1", "port": reinject},
        **sections,
    )
    gateway = Gateway(load_settings(config), config)
    milter = MilterServer(gateway)
    await milter.start()
    # Postfix runs config/postfix/milter.{main,master}.cf, the snippets docs/deployment.md
    # gives operators, with the test's ports.
    main, master = snippet("milter", port, {11332: milter_port, 10026: reinject})
    postfix = PostfixInstance(port, sink.port, main, master)
    await asyncio.to_thread(postfix.start)
    try:
        yield Stack(gateway, milter, postfix)
    finally:
        await asyncio.to_thread(postfix.stop)
        await milter.drain(1.0)
        await gateway.aclose()


async def send(port: int, data: bytes, sender="a@sender.test", rcpts=("bob@example.test",)):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
        return await client.sendmail(sender, list(rcpts), data)


async def test_clean_mail_is_delivered_with_our_headers_and_the_queue_id(sink, config_factory):
    async with milter_stack(sink, config_factory) as stack:
        forged = message(subject="clean", X_Mailmoat_Action="accept", X_Mailmoat_Old="x")
        await send(stack.port, forged)
        [received] = await sink.wait_for(1)
        assert received.data.count(b"X-Mailmoat-Action:") == 1
        assert b"X-Mailmoat-Action: accept" in received.data
        assert b"X-Mailmoat-Old" not in received.data  # forged copies removed by CHGHEADER
        [event] = stack.events(kind="message")
        assert event.action == "accept"
        assert event.client_ip == "127.0.0.1"
        queue_id = event.details["mta"]["i"]
        # The event is found from Postfix's log line, and the log line from the event.
        assert re.search(rf"{queue_id}: client=localhost\[127\.0\.0\.1\]", stack.postfix.log())
        assert event.details["front"] == "milter"
        assert f"X-Mailmoat-Id: {event.id}".encode() in received.data


async def test_eicar_is_refused_by_postfix_with_our_554(sink, config_factory, clamd):
    async with milter_stack(
        sink, config_factory, antivirus={"address": clamd.address},
        checks__antivirus={"enabled": True},
    ) as stack:  # fmt: skip
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(stack.port, message(subject="eicar", body=EICAR.decode() + "\r\n"))
        assert refused.value.code == 554
        assert "Virus found: Mailmoat.Test.EICAR" in refused.value.message
        assert sink.messages == []
        assert "milter-reject: END-OF-MESSAGE" in stack.postfix.log()


async def test_dmarc_reject_is_refused(sink, config_factory, dns):
    async with milter_stack(
        sink, config_factory, dns={"nameservers": [dns.address], "timeout": 1.0},
        checks__auth={"enabled": True},
    ) as stack:  # fmt: skip
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(stack.port, authdata.message(), sender="alice@sender.test")
        assert refused.value.code == 554
        assert "DMARC policy of sender.test" in refused.value.message
        [event] = stack.events(kind="message")
        # The client Postfix reports is 127.0.0.1, outside sender.test's SPF: no aligned pass.
        assert "DMARC_POLICY_REJECT" in {s["name"] for s in event.symbols}


@pytest.mark.parametrize("mode", ["discard", "hold"])
async def test_quarantine_is_held_then_released_through_postfix(sink, config_factory, mode):
    payload = zip_of("invoice.exe", b"MZ" + b"\x00" * 100)
    for level in range(5):
        payload = zip_of(f"l{level}.zip", payload)
    async with milter_stack(sink, config_factory, milter={"quarantine": mode}) as stack:
        await send(stack.port, attached("docs.zip", payload))  # 250: held, not lost
        [event] = stack.events(kind="message")
        assert event.action == "quarantine"
        await asyncio.sleep(1.0)
        assert sink.messages == []  # Postfix did not deliver it
        if mode == "hold":
            assert "milter-hold" in stack.postfix.log() or "hold" in stack.postfix.log()
        reply = await stack.gateway.release(event.id, actor="test")
        assert reply.ok, reply
        [released] = await sink.wait_for(1)
        assert b"docs.zip" in released.data


async def test_mailmoat_down_means_postfix_defers(sink, config_factory):
    async with milter_stack(sink, config_factory) as stack:
        await stack.milter.drain(0.5)  # the milter port is closed now
        with pytest.raises(aiosmtplib.SMTPResponseException) as deferred:
            await send(stack.port, message(subject="unscanned"))
        assert deferred.value.code // 100 == 4
        await asyncio.sleep(0.5)
        assert sink.messages == []  # nothing accepted unscanned


async def test_several_messages_on_one_connection_and_a_big_one(sink, config_factory):
    async with milter_stack(sink, config_factory) as stack:
        big = message(subject="big", body=("x" * 998 + "\r\n") * 10_500)  # about 10 MB
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.port, timeout=120) as client:
            for n in range(3):
                await client.sendmail("a@sender.test", ["bob@example.test"],
                                      message(subject=f"one of three {n}"))  # fmt: skip
            await client.sendmail("a@sender.test", ["bob@example.test"], big)
        received = await sink.wait_for(4, timeout=60)
        assert sorted(len(r.data) > 10_000_000 for r in received) == [False, False, False, True]
        events = stack.events(kind="message")
        assert len(events) == 4
        assert len({e.details["mta"]["i"] for e in events}) == 4
        assert len({e.id.split(".")[0] for e in events}) == 1  # one milter connection


async def test_a_client_that_disconnects_mid_data_leaves_nothing(sink, config_factory):
    async with milter_stack(sink, config_factory) as stack:
        _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        for line in (b"EHLO client.test\r\n", b"MAIL FROM:<a@sender.test>\r\n",
                     b"RCPT TO:<bob@example.test>\r\n", b"DATA\r\n"):  # fmt: skip
            writer.write(line)
            await writer.drain()
        writer.write(b"Subject: half\r\n\r\nhalf a mess")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()
        await asyncio.sleep(1.0)
        await send(stack.port, message(subject="after the abort"))
        [received] = await sink.wait_for(1)
        assert b"after the abort" in received.data
        assert [e.subject for e in stack.events(kind="message")] == ["after the abort"]
