"""EICAR through SMTP end to end: 554 with the signature; AV_FAIL policies at the wire."""

from __future__ import annotations

import aiosmtplib
import pytest

from tests.clamav import EICAR
from tests.conftest import running_gateway
from tests.messages import plain, with_attachments, zip_bytes


async def send(port, data):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        return await client.sendmail("a@sender.test", ["bob@example.test"], data)


async def test_eicar_zip_is_rejected_with_554_and_the_signature(sink, config_factory, clamd):
    config = config_factory(
        sink.port, antivirus={"address": clamd.address}, checks__antivirus={"enabled": True}
    )
    async with running_gateway(config) as gw:
        raw = with_attachments(("invoice.zip", zip_bytes({"eicar.com": EICAR}), "application/zip"))
        with pytest.raises(aiosmtplib.SMTPDataError) as rejected:
            await send(gw.port, raw)
        assert rejected.value.code == 554
        assert "5.7.1 Virus found: Mailmoat.Test.EICAR" in rejected.value.message
        [event] = gw.events(kind="message")
        assert event.action == "reject"
        assert event.reason == "forced by VIRUS_FOUND"
        assert "VIRUS_FOUND" in {s["name"] for s in event.symbols}
        await send(gw.port, plain("clean"))
    assert len(sink.messages) == 1


async def test_clamd_down_tempfails_with_451_4_7_1(sink, config_factory, tmp_path):
    address = f"unix:{tmp_path}/no-clamd.sock"
    config = config_factory(
        sink.port, antivirus={"address": address}, checks__antivirus={"enabled": True}
    )
    async with running_gateway(config) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await send(gw.port, plain("hello"))
        assert deferred.value.code == 451
        assert "4.7.1" in deferred.value.message
    assert sink.messages == []


async def test_fail_open_says_so_in_a_header_and_the_event(sink, config_factory, tmp_path):
    address = f"unix:{tmp_path}/no-clamd.sock"
    section = {"enabled": True, "on_error": "accept"}
    config = config_factory(sink.port, antivirus={"address": address}, checks__antivirus=section)
    async with running_gateway(config) as gw:
        await send(gw.port, plain("hello"))
        [event] = gw.events(kind="message")
        assert "AV_FAIL" in {s["name"] for s in event.symbols}
    [received] = sink.messages
    assert b"X-Mailmoat-Unscanned: antivirus (AV_FAIL)" in received.data
