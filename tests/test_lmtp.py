"""The LMTP backend against Debian's real Dovecot (dovecot-lmtpd), started by the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from gateway.lmtp import combine, dot_stuffed
from gateway.relay import Reply
from tests.conftest import free_port, message, running_gateway
from tests.dovecot import DovecotInstance, available

needs_dovecot = pytest.mark.skipif(not available(), reason="needs Debian's dovecot, run as root")


def test_dot_stuffing_and_line_ends():
    assert dot_stuffed(b"a\n.b\r\nc\rd") == b"a\r\n..b\r\nc\r\nd\r\n.\r\n"
    # A smuggled end of data (bare LF, dot, bare LF) stays inside the message.
    assert b"\r\n.\r\n" not in dot_stuffed(b"x\n.\nMAIL FROM:<evil>\n")[:-5]


def test_one_reply_for_the_client_from_one_per_recipient():
    ok, full = Reply(250, "2.0.0 Saved"), Reply(552, "5.2.2 Quota exceeded")
    assert combine({"a": ok, "b": ok}).code == 250
    assert combine({"a": full, "b": Reply(550, "5.1.1 gone")}).code == 552
    mixed = combine({"a": ok, "b": full})
    assert mixed.code == 451  # the sender keeps it and retries: nothing lost
    assert "<b>: 552 5.2.2 Quota exceeded" in mixed.text


@contextlib.asynccontextmanager
async def gateway_to_dovecot(config_factory, via: str) -> AsyncIterator[tuple]:
    dovecot = DovecotInstance(free_port())
    await asyncio.to_thread(dovecot.start)
    backend = {"kind": "lmtp", "host": "127.0.0.1", "port": dovecot.port}
    if via == "unix":
        backend["socket"] = str(dovecot.socket)
    try:
        async with running_gateway(config_factory(None, backend=backend)) as gw:
            yield gw, dovecot
    finally:
        await asyncio.to_thread(dovecot.stop)


@needs_dovecot
@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_mail_is_delivered_into_the_store_with_our_headers(config_factory, via):
    async with gateway_to_dovecot(config_factory, via) as (gw, dovecot):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30) as client:
            await client.sendmail("a@sender.test", ["bob@example.test", "carol@example.test"],
                                  message(subject=f"via {via}"))  # fmt: skip
        for user in ("bob", "carol"):
            [stored] = dovecot.messages(user)
            assert f"Subject: via {via}".encode() in stored
            assert b"X-Mailmoat-Action: accept" in stored
        assert (await gw.gateway.readiness()).get("backend") is None


@needs_dovecot
async def test_an_unknown_mailbox_is_refused_at_rcpt_with_the_stores_words(config_factory):
    async with gateway_to_dovecot(config_factory, "tcp") as (gw, _):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30) as client:
            await client.mail("a@sender.test")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("nobody@example.test")
            assert refused.value.code == 550
            assert "User doesn't exist" in refused.value.message
        [event] = gw.events(kind="rcpt_refused")
        assert "5.1.1" in event.backend_reply


@needs_dovecot
async def test_a_full_mailbox_after_data_defers_the_whole_message(config_factory):
    async with gateway_to_dovecot(config_factory, "tcp") as (gw, dovecot):
        big = message(subject="for bob and a full box", body="y" * 3000 + "\r\n")
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30) as c:
                await c.sendmail("a@sender.test", ["bob@example.test", "full@example.test"], big)
        assert deferred.value.code == 451
        assert "<full@example.test>: 552 5.2.2" in deferred.value.message
        # bob's box took it: the sender's retry will give him a second copy (documented).
        assert len(dovecot.messages("bob")) == 1
        [event] = gw.events(kind="message")
        assert event.smtp_reply.startswith("451 4.3.0")


@needs_dovecot
async def test_a_store_that_is_down_is_a_4xx_and_not_ready(config_factory):
    async with gateway_to_dovecot(config_factory, "tcp") as (gw, dovecot):
        await asyncio.to_thread(dovecot.stop)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30) as client:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as deferred:
                await client.mail("a@sender.test")
            assert deferred.value.code == 451
        assert "backend" in await gw.gateway.readiness()
