"""A 50 MB message through the whole local pipeline (parse, content, classifier, rules):
a verdict and an event, in bounded time and bounded memory of the gateway process."""

from __future__ import annotations

import os
import re
import signal
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from gateway.config import load_settings
from gateway.events import EventFilter
from gateway.store import SqliteStore
from tests.conftest import free_port
from tests.smtp.test_lifecycle import ROOT, start_process, wait_for_port

RULES = ROOT / "tests" / "data" / "rules" / "basic"


def fifty_megabytes() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = "bob@example.test"
    msg["Subject"] = "the quarterly archive"
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<big@sender.test>"
    msg.set_content("Hi Bob, the archive is attached.\n" * 200)
    # Random bytes: base64 of incompressible data, 37.5 MB decoded in the attachment.
    msg.add_attachment(
        os.urandom(37_500_000), maintype="application", subtype="octet-stream", filename="a.bin"
    )
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


async def test_fifty_megabyte_message_gets_a_verdict_in_bounded_time_and_memory(
    sink, config_factory
):
    port = free_port()
    config = config_factory(
        sink.port,
        server={"listen": f"127.0.0.1:{port}", "max_message_size": 64 * 1024 * 1024},
        **{
            "checks.classifier": {"enabled": True},
            "rules": {"enabled": True, "paths": [str(RULES)]},
        },
    )
    proc = await start_process(config)
    try:
        await wait_for_port(port, timeout=60)
        idle_mib = peak_rss_mib(proc.pid)
        data = fifty_megabytes()
        assert len(data) > 50_000_000
        started = time.monotonic()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120) as client:
            await client.mail("a@sender.test", options=[f"SIZE={len(data)}"])
            await client.rcpt("bob@example.test")
            reply = await client.data(data)
        elapsed = time.monotonic() - started
        peak_mib = peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    assert reply.code == 250, reply
    [received] = await sink.wait_for(1)
    assert len(received.data) > len(data)  # stamped with our headers, body intact
    assert received.data.endswith(data[-1000:])
    print(f"50 MB: {elapsed:.1f} s, gateway peak {peak_mib:.0f} MiB (idle {idle_mib:.0f} MiB)")
    assert elapsed < 60
    # Linear in the size: a bounded number of copies (measured: about 7.5, the SMTP buffer,
    # the parsed and decoded parts, the stamped and the dot-stuffed copies), not one per
    # check or per part, and nothing quadratic.
    assert peak_mib - idle_mib < 12 * len(data) / 2**20

    store = SqliteStore(load_settings(config).store.database)
    try:
        [event] = store.list(EventFilter(kind="message"))
    finally:
        store.close()
    assert event.size == len(data)
    assert event.action == "accept"
    assert {"content", "classifier"} <= set(event.timings_ms)
