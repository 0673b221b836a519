"""Antivirus and content checks: scans per second and latency, on the corpus and a 5 MB message.

Run:  .venv/bin/python -m bench.antivirus [--limit N]

Starts its own clamd (project signatures, plus official databases if installed), then
measures, back to back:
- the antivirus check through Mailmoat's asyncio INSTREAM client, sequentially (latency)
  and with 4 scans in flight (throughput);
- the same scans through the `clamd` package (blocking sockets) in threads, for comparison;
- the content check on the same messages;
- both on one message with a 5 MB attachment;
and prints clamd's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import clamd as clamd_package

from bench.common import load_corpus, percentile, rss_kib, table
from gateway.checks.antivirus import AntivirusCheck
from gateway.checks.content import ContentCheck
from gateway.config import ClamdConfig, Settings
from gateway.context import Envelope, ScanContext
from tests.clamav import ClamdProcess
from tests.messages import with_attachments


def ctx(raw: bytes) -> ScanContext:
    return ScanContext(
        Envelope(id="0000000000000000.1", raw=raw, mail_from="a@b.c", rcpts=("d@e.f",))
    )


async def sequential(scan, messages: list[bytes]) -> list[float]:
    latencies = []
    for raw in messages:
        started = time.perf_counter()
        await scan(raw)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def concurrent(scan, messages: list[bytes], width: int) -> float:
    queue = list(messages)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await scan(queue.pop())

    await asyncio.gather(*(worker() for _ in range(width)))
    return len(messages) / (time.perf_counter() - started)


def row(name: str, latencies: list[float], rate: float | None = None) -> list[object]:
    per_second = rate if rate is not None else len(latencies) / (sum(latencies) / 1000)
    return [name, len(latencies), per_second, percentile(latencies, 50), percentile(latencies, 95),
            percentile(latencies, 99), max(latencies)]  # fmt: skip


async def main(limit: int | None) -> None:
    corpus = [raw for _, raw in load_corpus(limit)]
    official = sorted(
        p.name for p in await asyncio.to_thread(Path("/var/lib/clamav").glob, "*.c[lv]d")
    )
    print(f"official ClamAV databases: {official or 'none (project signatures only)'}")
    big = with_attachments(("report.bin", os.urandom(5 * 1024 * 1024), "application/octet-stream"))
    with tempfile.TemporaryDirectory() as tmp:
        clamd = ClamdProcess(Path(tmp), stream_max="64M").start()
        try:
            settings = Settings(antivirus=ClamdConfig(address=clamd.address, timeout=60))
            av = AntivirusCheck.from_config({}, settings)
            content = ContentCheck.from_config({}, settings)
            pool = ThreadPoolExecutor(4)
            loop = asyncio.get_running_loop()

            def blocking_scan(raw: bytes) -> object:
                # The package keeps its socket on the instance: one instance per call.
                return clamd_package.ClamdUnixSocket(str(clamd.socket)).instream(io.BytesIO(raw))

            async def via_package(raw: bytes) -> None:
                await loop.run_in_executor(pool, blocking_scan, raw)

            async def via_check(raw: bytes) -> None:
                await av.run(ctx(raw))

            async def via_content(raw: bytes) -> None:
                await content.run(ctx(raw))

            rss_before = rss_kib(clamd.process.pid)
            sample = corpus[:1000]
            # Two rounds, A B A B, and the second is reported: the first pays for warm-up.
            for _ in range(2):
                rows = [
                    row(
                        "antivirus check, asyncio client, 1 in flight",
                        await sequential(via_check, corpus),
                    ),
                    row(
                        "clamd package in a thread, 1 in flight",
                        await sequential(via_package, corpus),
                    ),
                ]
                for name, scan in (("antivirus check, asyncio client", via_check),
                                   ("clamd package in threads", via_package)):  # fmt: skip
                    rate = await concurrent(scan, corpus, 4)
                    rows.append(row(f"{name}, 4 in flight", await sequential(scan, sample), rate))
            rows.append(row("content check, 1 at a time", await sequential(via_content, corpus)))
            rows.append(
                row("antivirus check, 5 MB attachment", await sequential(via_check, [big] * 10))
            )
            rows.append(
                row("content check, 5 MB attachment", await sequential(via_content, [big] * 10))
            )
            rss_after = rss_kib(clamd.process.pid)
            pool.shutdown()
        finally:
            clamd.stop()
    size = sum(len(m) for m in corpus) / len(corpus)
    print(
        f"corpus: {len(corpus)} messages, mean {size / 1024:.1f} KiB; big: {len(big) / 1e6:.1f} MB"
    )
    print("(latency columns of the '4 in flight' rows are measured 1 at a time, on 1000 messages)")
    print(table(["what", "messages", "msgs/s", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows))
    start, end = rss_before / 1024, rss_after / 1024
    print(f"clamd resident memory: {start:.1f} MiB at start, {end:.1f} MiB at the end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, help="use only the first N corpus messages")
    asyncio.run(main(parser.parse_args().limit))
