"""Disguised executables through SMTP: held in quarantine, with the evidence in the event."""

from __future__ import annotations

import aiosmtplib

from tests.checks.test_content import PE
from tests.conftest import running_gateway
from tests.messages import with_attachments


async def test_pe_disguised_as_pdf_is_quarantined(sink, config_factory):
    async with running_gateway(config_factory(sink.port)) as gw:
        raw = with_attachments(("invoice.pdf", PE, "application/pdf"))
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=20) as client:
            _, reply = await client.sendmail("a@sender.test", ["bob@example.test"], raw)
        assert "queued as" in reply
        [event] = gw.events(kind="message")
        assert event.action == "quarantine"
        names = {s["name"]: s for s in event.symbols}
        assert names["ATTACHMENT_EXECUTABLE"]["details"]["files"][0]["file"] == "invoice.pdf"
        assert "ATTACHMENT_TYPE_MISMATCH" in names
        assert event.timings_ms["content"] >= 0
        [held] = gw.gateway.quarantine.list()
        assert held.id == event.id
    assert sink.messages == []
