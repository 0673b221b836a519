"""SIGKILL of the gateway during a burst: every message a client saw 250 for is at the backend."""

from __future__ import annotations

import asyncio
import signal

import aiosmtplib

from tests.conftest import free_port, message
from tests.smtp.test_lifecycle import start_process, wait_for_port


async def client(port: int, subjects: list[str], acknowledged: set[str]) -> None:
    for subject in subjects:
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
                await smtp.sendmail("a@sender.test", ["bob@example.test"], message(subject=subject))
            acknowledged.add(subject)
        except (aiosmtplib.SMTPException, OSError):
            await asyncio.sleep(0.05)  # the sender keeps it and would retry later


async def test_sigkill_during_a_burst_loses_nothing_acknowledged(sink, config_factory):
    port = free_port()
    config = config_factory(sink.port, server={"listen": f"127.0.0.1:{port}"})
    proc = await start_process(config)
    acknowledged: set[str] = set()
    try:
        await wait_for_port(port)
        subjects = [f"burst-{n}" for n in range(2000)]
        clients = [
            asyncio.create_task(client(port, subjects[i::10], acknowledged)) for i in range(10)
        ]
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # no drain, no cleanup: a crash
        await proc.wait()
        await asyncio.gather(*clients)
        # Restart: the service comes back on the same store and port.
        proc = await start_process(config)
        await wait_for_port(port)
        await client(port, ["after-restart"], acknowledged)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    delivered = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in sink.messages}
    assert acknowledged, "the burst should have delivered something before the kill"
    assert "after-restart" in acknowledged
    assert acknowledged <= delivered  # nothing acknowledged is lost
    assert len(acknowledged) < 2001  # the kill interrupted the burst
