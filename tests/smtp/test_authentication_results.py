"""Authentication-Results through SMTP: ours added, a forged one with our id removed."""

from __future__ import annotations

import asyncio

import aiosmtplib

from tests import authdata
from tests.conftest import running_gateway


async def send(port, raw, mail_from="alice@sender.test"):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        return await client.sendmail(mail_from, ["bob@example.test"], raw)


async def test_header_added_and_forgery_removed(sink, config_factory, dns, keys):
    config = config_factory(
        sink.port,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        checks__auth={"enabled": True},
    )
    forged = b"Authentication-Results: mx.test; dkim=pass header.d=bank.test; dmarc=pass\r\n"
    foreign = b"Authentication-Results: upstream.test; spf=pass\r\n"
    raw = forged + foreign + authdata.sign_rsa(authdata.message(), keys)
    async with running_gateway(config) as gw:
        # The loopback client's IP is not in sender.test's SPF: DKIM alone aligns for DMARC.
        await send(gw.port, raw)
        [event] = gw.events(kind="message")
        names = {s["name"] for s in event.symbols}
        assert {"SPF_FAIL", "DKIM_VALID", "DMARC_PASS"} <= names
    [received] = await sink.wait_for(1)
    head = received.data.split(b"\r\n\r\n")[0]
    # Our Received field on top (the trace of this hop), then our Authentication-Results.
    assert head.startswith(b"Received: from localhost ([127.0.0.1]) by mx.test (Mailmoat)")
    assert b"\r\nAuthentication-Results: mx.test;\r\n spf=fail" in head
    assert head.count(b"Authentication-Results: mx.test") == 1
    assert b"header.d=bank.test" not in head
    assert foreign.rstrip() in head
    assert b"dkim=pass header.d=sender.test header.s=sel" in head


async def test_one_slow_domain_does_not_stall_other_sessions(sink, config_factory, dns, keys):
    dns.zone.drop.add("slow.test.")
    config = config_factory(
        sink.port,
        dns={"nameservers": [dns.address], "timeout": 2.0},
        checks__auth={"enabled": True},
    )
    async with running_gateway(config) as gw:
        slow = asyncio.create_task(send(gw.port, authdata.message("a@slow.test"), "a@slow.test"))
        await asyncio.sleep(0.1)  # the slow lookup is under way
        await send(gw.port, authdata.message("a@nospf.test", subject="fast"), "a@nospf.test")
        assert not slow.done()  # the fast message was accepted while the slow one waited
        await slow
        events = gw.events(kind="message")
        slow_event = next(e for e in events if e.mail_from == "a@slow.test")
        assert "SPF_TEMPERROR" in {s["name"] for s in slow_event.symbols}
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages]
    assert subjects[0] == b"fast"
