"""/metrics, /healthz and /readyz of the gateway, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import re

import aiosmtplib

from gateway.config import parse_hostport
from gateway.metrics import serve_metrics
from tests.conftest import free_port, message, running_gateway


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_health_and_readiness(sink, config_factory):
    async with running_gateway(config_factory(sink.port)) as gw:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            await client.sendmail("a@sender.test", ["bob@example.test"], message(Date=None))
        port = free_port()
        host, _ = parse_hostport(f"127.0.0.1:{port}")
        server = await serve_metrics(gw.gateway.metrics, gw.gateway.readiness, host, port)
        try:
            status, body = await get(port, "/metrics")
            assert status == 200
            assert 'mailmoat_messages_total{action="accept"} 1.0' in body
            assert 'mailmoat_symbols_total{symbol="HDR_MISSING_DATE"} 1.0' in body
            assert 'mailmoat_check_seconds_bucket{check="headers"' in body
            assert (await get(port, "/healthz")) == (200, "ok\n")
            assert (await get(port, "/readyz")) == (200, "ready\n")
            await sink.stop()
            status, body = await get(port, "/readyz")
            assert status == 503
            assert body.startswith("backend: 127.0.0.1:")
            assert (await get(port, "/nope"))[0] == 404
        finally:
            server.close()


async def test_metrics_add_up_every_worker(sink, config_factory):
    """N messages through two workers read N, whichever worker answers /metrics."""
    import signal

    from tests.conftest import send_message
    from tests.smtp.test_lifecycle import start_process, wait_for_port

    port, metrics_port = free_port(), free_port()
    config = config_factory(sink.port, server={
        "listen": f"127.0.0.1:{port}", "workers": 2, "metrics_listen": f"127.0.0.1:{metrics_port}",
    })  # fmt: skip
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        await wait_for_port(metrics_port)
        for n in range(10):  # a session each: the kernel hands them to either worker
            await send_message(port, message(subject=f"n{n}"))
        await sink.wait_for(10)
        status, text = await get(metrics_port, "/metrics")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    counted = re.search(r'^mailmoat_messages_total\{action="accept"\} (\S+)$', text, re.M)
    assert counted, text[:3000] or "(empty)"
    assert float(counted.group(1)) == 10.0
