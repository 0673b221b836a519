"""Soak: hundreds of concurrent connections for minutes, a mixed load, faults on the way.

Run:  .venv/bin/python -m bench.soak [--seconds 180] [--connections 300]

The real gateway (`mailmoat serve`, one worker per core, every check and the starter rules
on) relays to a sink in its own process that records the id of every message it takes;
clamd and an authoritative DNS server on loopback serve the checks. Clients, spread over
ten loopback source addresses, send sessions of 1-5 messages: clean (DKIM-signed and
corpus ham), spam (corpus), a virus (EICAR in an attachment) and malformed MIME. Along the
way the backend is restarted (down 3 s) and so is clamd (down 3 s).

Printed: messages per second, latency percentiles, gateway memory over the run (start,
end, largest), and the count reconciliation: sent, acknowledged (250), rejected (5xx),
deferred (4xx), no reply (connection lost), delivered (at the sink), quarantined, and
lost: acknowledged but neither delivered nor quarantined, which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from bench.common import load_corpus, percentile, rss_kib, table
from bench.sink_server import SOAK_ID, SinkProcess
from bench.throughput import DnsProcess, Gateway, family
from tests import authdata
from tests.clamav import EICAR, ClamdProcess
from tests.conftest import free_port, write_config
from tests.dnsserver import txt
from tests.messages import with_attachments

SOURCES = [f"127.0.0.{n}" for n in range(2, 12)]


@dataclass
class Tally:
    """What the clients saw, per message id."""

    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    prefix: str = "s"
    next_id: int = 0

    def new_id(self) -> str:
        self.next_id += 1
        return f"{self.prefix}{self.next_id}"


def malformed() -> list[bytes]:
    head = (
        b"From: x@bench.test\r\nTo: bob@example.test\r\nSubject: =?utf-8?B?!!!?= =?x?q?\xff?=\r\n"
    )
    deep = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(60)
    )
    return [
        head + b'Content-Type: multipart/mixed; boundary="never"\r\n\r\n--nope\r\nbody\r\n',
        head + b"Content-Transfer-Encoding: base64\r\n\r\n" + b"!!@@##$$%%^^&&**" * 400 + b"\r\n",
        head
        + b"X-Folded:\r\n \r\n \r\n\tvalue\r\n"
        + b"X-Long: "
        + b"a" * 3000
        + b"\r\n\r\nbody\r\n",
        head + deep + b"the end\r\n",
        head + b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n\x80\x81\x82 body\r\n",
    ]


def mix() -> dict[str, list[bytes]]:
    keys = authdata.make_keys(Path(tempfile.mkdtemp(prefix="mailmoat-soak-keys-")))
    body = "Numbers for the quarterly report are attached below, as agreed.\r\n" * 70
    signed = [
        authdata.sign_rsa(
            authdata.message("alice@bench.test", f"Report {n}", body), keys, "bench.test"
        )
        for n in range(50)
    ]
    corpus = load_corpus()
    random.Random(5).shuffle(corpus)
    ham = [raw for name, raw in corpus if "ham" in name][:300]
    spam = [raw for name, raw in corpus if "spam" in name][:300]
    virus = [with_attachments(("invoice.com", EICAR, "application/octet-stream"))]
    return {"keys": [keys], "clean": signed + ham, "spam": spam, "virus": virus,
            "malformed": malformed()}  # type: ignore[dict-item]  # fmt: skip


def pick(messages: dict[str, list[bytes]], rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choices(["clean", "spam", "virus", "malformed"], [55, 30, 7, 8])[0]
    return kind, rng.choice(messages[kind])


async def session(port: int, messages: dict[str, list[bytes]], tally: Tally, rng: random.Random,
                  source: str) -> None:  # fmt: skip
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60,
                             source_address=(source, 0))  # fmt: skip
    try:
        await client.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        tally.outcomes[f"connect failed: {type(exc).__name__}"] += 1
        await asyncio.sleep(0.5)
        return
    try:
        for _ in range(rng.randint(1, 5)):
            _kind, raw = pick(messages, rng)
            token = tally.new_id()
            tally.sent += 1
            started = time.perf_counter()
            try:
                await client.sendmail(
                    "alice@bench.test", ["bob@example.test"], b"X-Soak-Id: " + token.encode() +
                    b"\r\n" + raw,
                )  # fmt: skip
            except aiosmtplib.SMTPRecipientsRefused as exc:
                code = exc.recipients[0].code
                tally.outcomes["rejected" if code >= 500 else "deferred"] += 1
            except aiosmtplib.SMTPResponseException as exc:
                tally.outcomes["rejected" if exc.code >= 500 else "deferred"] += 1
                if exc.code < 500:
                    # A sending MTA keeps a deferred message queued and comes back later.
                    await asyncio.sleep(1)
                    return
            except (aiosmtplib.SMTPException, OSError):
                tally.outcomes["no reply"] += 1
                return
            else:
                tally.acknowledged.add(token)
                tally.outcomes["acknowledged"] += 1
                tally.latencies.append((time.perf_counter() - started) * 1000)
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


async def drive(port: int, messages: dict[str, list[bytes]], connections: int, seconds: float,
                tally: Tally) -> None:  # fmt: skip
    deadline = time.monotonic() + seconds

    async def slot(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < deadline:
            await session(port, messages, tally, rng, SOURCES[n % len(SOURCES)])

    await asyncio.gather(*(slot(n) for n in range(connections)))


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes together (those gone since are skipped)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += rss_kib(pid)
    return total / 1024


async def faults(sink: SinkProcess, clamd: ClamdProcess, seconds: float, log: list[str]) -> None:
    """Stop the backend at 30% of the run and clamd at 60%, each for 3 s."""
    started = time.monotonic()
    for fraction, name, part in ((0.3, "backend", sink), (0.6, "clamd", clamd)):
        await asyncio.sleep(max(0.0, started + seconds * fraction - time.monotonic()))
        log.append(f"{time.monotonic() - started:.0f}s {name} stopped")
        part.stop()
        await asyncio.sleep(3)
        await asyncio.to_thread(part.start)
        log.append(f"{time.monotonic() - started:.0f}s {name} back")


async def sample_memory(pid: int, seconds: float, samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        samples.append((time.monotonic() - started, rss_mib(family(pid))))
        await asyncio.sleep(5)
    samples.append((time.monotonic() - started, rss_mib(family(pid))))


def main(seconds: float, connections: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-soak-"))
    messages = mix()
    keys = messages.pop("keys")[0]
    zone = authdata.make_zone(keys)  # type: ignore[arg-type]
    zone.add("bench.test", "TXT", txt("v=spf1 ip4:127.0.0.0/8 -all"))
    zone.add("sel._domainkey.bench.test", "TXT", txt(f"v=DKIM1; k=rsa; p={keys.rsa_public_b64}"))  # type: ignore[attr-defined]
    zone.add("_dmarc.bench.test", "TXT", txt("v=DMARC1; p=reject"))
    dns = DnsProcess(zone)
    sink = SinkProcess(free_port(), tmp / "delivered.txt")
    sink.start()
    clamd = ClamdProcess(tmp / "clamd", stream_max="64M").start()
    port = free_port()
    store = tmp / "store"
    config = write_config(tmp / "gateway.toml", {
        "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "",
                   "pid_file": str(tmp / "pid"), "max_connections": 1000,
                   "max_connections_per_ip": 100, "hostname": "mx.bench",
                   "accept_domains": ["example.test"]},
        "backend": {"kind": "smtp", "host": "127.0.0.1", "port": sink.port},
        "store": {"path": str(store), "retain_sample_rate": 0.1},
        "antivirus": {"address": clamd.address},
        "dns": {"nameservers": [dns.address], "timeout": 2.0},
    })  # fmt: skip
    gateway = Gateway(config, port)
    tally = Tally()
    fault_log: list[str] = []
    memory: list[tuple[float, float]] = []
    try:
        warm = Tally(prefix="w")
        asyncio.run(drive(port, messages, 10, 5, warm))  # warm-up: model, caches, clamd
        started = time.monotonic()

        async def run() -> None:
            await asyncio.gather(
                drive(port, messages, connections, seconds, tally),
                faults(sink, clamd, seconds, fault_log),
                sample_memory(gateway.process.pid, seconds, memory),
            )

        asyncio.run(run())
        elapsed = time.monotonic() - started
        time.sleep(1)  # let the last writes land
    finally:
        gateway.stop()
        sink.stop()
        clamd.stop()
    lines = (tmp / "delivered.txt").read_bytes().decode().split()
    delivered_counts = Counter(t for t in lines if t.startswith(tally.prefix))
    quarantined = set()
    for held in (store / "quarantine").glob("*.eml"):
        found = SOAK_ID.search(held.read_bytes()[:4096])
        if found:
            quarantined.add(found.group(1).decode())
    quarantined = {t for t in quarantined if t.startswith(tally.prefix)}
    delivered = set(delivered_counts)
    acked = tally.acknowledged
    lost = acked - delivered - quarantined
    print(f"{seconds:.0f} s, {connections} concurrent connections from {len(SOURCES)} source "
          f"addresses; gateway workers: one per core; faults: {', '.join(fault_log)}")  # fmt: skip
    print(table(["figure", "value"], [
        ["messages per second (acknowledged)", f"{len(acked) / elapsed:.0f}"],
        ["messages per second (answered)",
         f"{(tally.sent - tally.outcomes['no reply']) / elapsed:.0f}"],
        ["latency p50 / p95 / p99 ms (acknowledged)",
         f"{percentile(tally.latencies, 50):.0f} / {percentile(tally.latencies, 95):.0f} / "
         f"{percentile(tally.latencies, 99):.0f}"],
        ["gateway RSS MiB (all workers): start / end / largest",
         f"{memory[0][1]:.0f} / {memory[-1][1]:.0f} / {max(m for _, m in memory):.0f}"],
    ]))  # fmt: skip
    print(table(["count", "messages"], [
        ["sent", tally.sent],
        ["acknowledged (250)", len(acked)],
        ["rejected (5xx)", tally.outcomes["rejected"]],
        ["deferred (4xx)", tally.outcomes["deferred"]],
        ["no reply (connection lost)", tally.outcomes["no reply"]],
        ["delivered (at the sink, distinct)", len(delivered)],
        ["quarantined", len(quarantined)],
        ["delivered more than once", sum(1 for c in delivered_counts.values() if c > 1)],
        ["delivered without a 250 seen by the client", len(delivered - acked)],
        ["LOST (acknowledged, neither delivered nor quarantined)", len(lost)],
    ]))  # fmt: skip
    other = {k: v for k, v in tally.outcomes.items()
             if k not in ("acknowledged", "rejected", "deferred", "no reply")}  # fmt: skip
    if other:
        print("other outcomes:", dict(other))
    print("memory samples (s, MiB):", ", ".join(f"{t:.0f}:{m:.0f}" for t, m in memory))
    return 1 if lost else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    sys.exit(main(args.seconds, args.connections))
