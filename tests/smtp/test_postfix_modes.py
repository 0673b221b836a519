"""The SMTP front behind Debian's real Postfix, in the two ways docs/deployment.md gives:
before-queue (smtpd_proxy_filter) and after-queue (content_filter), each running the shipped
snippet config/postfix/<mode>.master.cf (and .main.cf) with the test's ports."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from tests.conftest import free_port, message, running_gateway
from tests.hostile.test_decision_layer import attached, zip_of
from tests.postfix import PostfixInstance, available, snippet

pytestmark = pytest.mark.skipif(not available(), reason="needs Debian's postfix, run as root")


def held_message() -> bytes:
    """An attachment nested past the archive depth: quarantined whatever the score."""
    payload = zip_of("invoice.exe", b"MZ" + b"\x00" * 100)
    for level in range(5):
        payload = zip_of(f"l{level}.zip", payload)
    return attached("docs.zip", payload)


@pytest.mark.parametrize("mode", ["proxy", "content_filter"])
async def test_postfix_hands_mail_to_mailmoat_and_takes_it_back(sink, config_factory, mode):
    port, gateway_port, reinject = free_port(), free_port(), free_port()
    config = config_factory(
        None,
        server={"listen": f"127.0.0.1:{gateway_port}"},
        backend={"kind": "smtp", "host": "127.0.0.1", "port": reinject},
    )
    main, master = snippet(mode, port, {10025: gateway_port, 10026: reinject})
    postfix = PostfixInstance(port, sink.port, main, master)
    async with running_gateway(config) as gw:
        await asyncio.to_thread(postfix.start)
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
                await client.sendmail("a@sender.test", ["bob@example.test"],
                                      message(subject=f"clean via {mode}"))  # fmt: skip
                await client.sendmail("a@sender.test", ["bob@example.test"], held_message())
            [received] = await sink.wait_for(1, timeout=30)
            assert f"clean via {mode}".encode() in received.data
            assert b"X-Mailmoat-Action: accept" in received.data
            async with asyncio.timeout(30):
                while True:
                    if len(gw.events(kind="message")) == 2:
                        break
                    await asyncio.sleep(0.2)
            actions = sorted(e.action for e in gw.events(kind="message"))
            assert actions == ["accept", "quarantine"]
            await asyncio.sleep(1.0)
            assert len(sink.messages) == 1  # the held one did not come out the other side
        finally:
            await asyncio.to_thread(postfix.stop)
