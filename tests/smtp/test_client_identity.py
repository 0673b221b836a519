"""The store behind the proxy learns who the real client was: our Received field, and
XFORWARD or XCLIENT toward Debian's real Postfix (started by the test) as the backend.

The client connects from 127.0.0.2 (loopback, another address than the gateway's own
127.0.0.1), so Postfix's log and Received header show which of the two it believed.
"""

from __future__ import annotations

import asyncio
import re

import aiosmtplib
import pytest

from gateway.disposition import received
from tests.conftest import free_port, message, running_gateway
from tests.postfix import PostfixInstance, available

CLIENT_IP = "127.0.0.2"


def test_received_field_follows_rfc5321():
    name, value = received(
        "client.example.test", "2001:db8::7", "mx.test", "ESMTPS",
        "6b0f00000000abcd.1", ["bob@example.test"], "TLSv1.3 TLS_AES_256",
    )  # fmt: skip
    assert name == "Received"
    assert value.startswith(
        "from client.example.test ([IPv6:2001:db8::7]) by mx.test (Mailmoat) "
        "(TLSv1.3 TLS_AES_256) with ESMTPS id 6b0f00000000abcd.1 for <bob@example.test>; "
    )
    # A HELO is the client's word: quoted made safe, never able to break the field.
    _, hostile = received("evil\r\nX-Injected: 1 (", "192.0.2.1", "mx.test", "ESMTP", "i.1", [])
    assert "\r" not in hostile
    assert "\n" not in hostile
    assert hostile.startswith("from evil??X-Injected:?1?( ([192.0.2.1])")
    assert " for <" not in hostile  # no single recipient named when there are none or many


@pytest.mark.skipif(not available(), reason="needs Debian's postfix, run as root")
@pytest.mark.parametrize("mode", ["xforward", "xclient", "off"])
async def test_postfix_behind_the_proxy_names_the_real_client(sink, config_factory, mode):
    port, gateway_port = free_port(), free_port()
    extra = {"smtpd_authorized_xclient_hosts": "127.0.0.0/8"} if mode == "xclient" else {}
    postfix = PostfixInstance(port, sink.port, extra)
    config = config_factory(
        None,
        server={"listen": f"127.0.0.1:{gateway_port}"},
        backend={"kind": "smtp", "host": "127.0.0.1", "port": port, "forward_client": mode},
    )
    async with running_gateway(config) as gw:
        await asyncio.to_thread(postfix.start)
        try:
            async with aiosmtplib.SMTP(
                hostname="127.0.0.1", port=gateway_port, timeout=30,
                source_address=(CLIENT_IP, 0), local_hostname="client.example.test",
            ) as client:  # fmt: skip
                await client.sendmail("a@sender.test", ["bob@example.test"], message())
            [delivered] = await sink.wait_for(1, timeout=30)
            log = postfix.log()
        finally:
            await asyncio.to_thread(postfix.stop)
        [event] = gw.events(kind="message")
    head = delivered.data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r?\n[ \t]+", " ", head)
    ours = re.search(r"Received: from client\.example\.test \(\[127\.0\.0\.2\]\) by mx\.test "
                     r"\(Mailmoat\) with ESMTP id " + re.escape(event.id), unfolded)  # fmt: skip
    assert ours, head
    if mode == "off":  # the control: without forwarding, Postfix sees only the gateway
        assert "client=localhost[127.0.0.1]" in log
        return
    # Postfix's log names the real client, and so do its restrictions and milters.
    assert re.search(r"client=unknown\[127\.0\.0\.2\]", log), log
    if mode == "xclient":  # XCLIENT also changes who Postfix says handed it the message
        postfix_received = r"Received: from client\.example\.test \(unknown \[127\.0\.0\.2\]\)"
        assert re.search(postfix_received, unfolded), unfolded
    else:  # XFORWARD leaves Postfix's Received on the real hop; ours names the client
        assert "Received: from mx.test (localhost [127.0.0.1])" in unfolded
        assert f"orig_queue_id={event.id.split('.')[0]}" in log
