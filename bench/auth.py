"""Latency of the auth check (SPF, DKIM, DMARC, ARC) with a local DNS server, cold and warm.

Run:  .venv/bin/python -m bench.auth [--messages N]

A real authoritative DNS server on loopback holds the SPF, DKIM and DMARC records; messages
of about 5 KB are DKIM-signed (RSA 2048) by the benchmark. "cold" builds a new resolver (empty
cache) for every message; "warm" reuses one, as the gateway does.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import percentile, table
from gateway.checks.auth import AuthCheck
from gateway.config import DnsConfig, Settings
from gateway.context import Envelope, ScanContext
from tests import authdata
from tests.dnsserver import DnsServer


def ctx(raw: bytes, ip: str, mail_from: str) -> ScanContext:
    env = Envelope(id="0000000000000000.1", raw=raw, mail_from=mail_from, rcpts=("b@example.test",),
                   client_ip=ip, helo="mail.sender.test")  # fmt: skip
    return ScanContext(env)


async def measure(make_check, messages: list[tuple[bytes, str, str]]) -> list[float]:
    latencies = []
    for raw, ip, mail_from in messages:
        check = make_check()
        started = time.perf_counter()
        await check.run(ctx(raw, ip, mail_from))
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = authdata.make_keys(Path(tmp))
    server = await DnsServer(authdata.make_zone(keys)).start()
    body = "Numbers attached. " * 260 + "\r\n"  # about 5 KB
    signed = authdata.sign_rsa(authdata.message(body=body), keys)
    listed = authdata.through_mailing_list(signed, keys)
    cases = {
        "DKIM-signed, SPF pass": (signed, authdata.SENDER_IP, "a@sender.test"),
        "unsigned, SPF include": (
            authdata.message(body=body),
            authdata.SENDER_IP,
            "a@include.test",
        ),
        "through a list (ARC)": (listed, authdata.LIST_IP, "b@list.test"),
    }
    settings = Settings(dns=DnsConfig(nameservers=[server.address], timeout=2.0))
    shared = AuthCheck.from_config({}, settings)
    rows = []
    try:
        for name, case in cases.items():
            messages = [case] * count
            cold = await measure(lambda: AuthCheck.from_config({}, settings), messages)
            await measure(lambda: shared, messages[:5])
            warm = await measure(lambda: shared, messages)
            for label, values in (("cold", cold), ("warm", warm)):
                spread = [percentile(values, q) for q in (50, 95, 99)]
                rows.append([name, label, len(values), *spread, sum(values) / len(values)])
    finally:
        await server.stop()
    print(f"{count} messages per row; local authoritative DNS on {server.address}")
    print(table(["message", "cache", "n", "p50 ms", "p95 ms", "p99 ms", "mean ms"], rows))
    print(f"DNS queries answered by the server: {sum(server.queries.values())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200)
    asyncio.run(main(parser.parse_args().messages))
