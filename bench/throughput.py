# ruff: noqa: E501 - long literal rows of the benchmark table
"""Throughput and latency of the whole gateway over loopback, against the limit.

Run:  .venv/bin/python -m bench.throughput [--messages N] [--quick]

Processes: an SMTP sink (bench/sink_server.py, its own process), a real clamd with the
project's signatures, an authoritative DNS server on loopback (in this process, its own
thread) holding SPF, DKIM and DMARC records of the test messages, and the gateway
(`mailmoat serve`, its own process) relaying to the sink. The load generator is an asyncio
SMTP client (aiosmtplib) in this process.

Rows, measured back to back: 1. the limit (generator straight to the sink); 2. the gateway
with every check off (pass-through: the proxy's own cost, events stored); 3. every check on
(antivirus, auth, content, classifier, header/protocol checks, the starter rules, events
stored); 4. each check alone. Columns: messages/s at concurrency 1, 10 and 50 with 1 and
with 10 messages per session, latency p50/p95/p99 at concurrency 10 (10 per session),
CPU ms per message of the gateway and of clamd, and peak memory of the gateway.

Where Postfix's test tools are installed (`apt-get install postfix`: smtp-source and
smtp-sink, both in C), a second table repeats rows 1-3 with them as generator and sink: the
same gateway with far less CPU spent around it (they measure no latency).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.common import ROOT, load_corpus, percentile, table
from bench.sink_server import SinkProcess
from tests import authdata
from tests.clamav import ClamdProcess
from tests.conftest import free_port, write_config
from tests.dnsserver import DnsServer, txt

CLK = os.sysconf("SC_CLK_TCK")
ERRORS: Counter[str] = Counter()  # refused or deferred before the message was handled
REFUSED: Counter[str] = Counter()  # 554 after DATA: the message was scanned, then refused
# (concurrent sessions, messages per session) of the full table; --quick runs two of them.
SHAPES = [(1, 1), (1, 10), (10, 1), (10, 10), (50, 1), (50, 10)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def family(pid: int) -> list[int]:
    """A process and its children (the gateway's workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"PPid:\t{pid}\n" in status:
                pids.append(int(entry.name))
    return pids


def family_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in family(pid))


def family_peak_mib(pid: int) -> float:
    """The largest peak resident memory among the gateway's processes."""
    return max(peak_rss_mib(p) for p in family(pid))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class DnsProcess:
    """The test DNS server in a process of its own, forked with the zone.

    Not a thread of the benchmark's process: the load generator holds that process's GIL,
    and a peer that asks DNS for every message (Haraka does; Mailmoat caches answers) would
    wait on the generator and look slower than it is. Stops with the benchmark (daemon).
    """

    def __init__(self, zone: Any) -> None:
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        self.process = context.Process(target=_serve_dns, args=(zone, theirs), daemon=True)
        self.process.start()
        if not ours.poll(10):
            raise RuntimeError("the benchmark's DNS server did not start")
        self.address: str = ours.recv()


def _serve_dns(zone: Any, pipe: Any) -> None:
    async def main() -> None:
        server = await DnsServer(zone).start()
        pipe.send(server.address)
        await asyncio.Event().wait()

    asyncio.run(main())


Batch = list[bytes] | list[tuple[str, bytes]]  # messages, or (envelope sender, message)


async def session(
    port: int, batch: Batch, latencies: list[float], host: str = "127.0.0.1",
    source: str | None = None,
) -> int:  # fmt: skip
    """One SMTP session sending ``batch``; the number of messages handled.

    A ``554`` after DATA counts as handled (the message was scanned, then refused: REFUSED);
    anything else refused or deferred does not (ERRORS).
    """
    handled = 0
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=120,
                             source_address=(source, 0) if source else None)  # fmt: skip
    await client.connect()
    try:
        for item in batch:
            sender, raw = item if isinstance(item, tuple) else ("alice@bench.test", item)
            started = time.perf_counter()
            try:
                await client.sendmail(sender, ["bob@example.test"], raw)
                handled += 1
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 554:
                    REFUSED[exc.message.split(" [")[0][:60]] += 1
                    handled += 1
                else:
                    ERRORS[f"{exc.code} {exc.message[:60]}"] += 1
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()
    return handled


async def load(
    port: int, messages: Batch, concurrency: int, per_session: int, total: int | None = None,
    host: str = "127.0.0.1", source: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``total`` messages (cycling through ``messages``) in sessions of ``per_session``."""
    queue = [messages[i % len(messages)] for i in range(total or len(messages))]
    batches = [queue[i : i + per_session] for i in range(0, len(queue), per_session)]
    latencies: list[float] = []
    sent = 0
    # The generator's own full collections (it imports the gateway and the tests: 100 ms
    # each) would be counted as the gateway's latency.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal sent
        while batches:
            done = await session(port, batches.pop(), latencies, host, source)  # type: ignore[arg-type]
            sent += done  # not `sent += await ...`: that reads sent before the await

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"rate": sent / seconds, "sent": sent, "latencies": latencies}


class CpuMeter:
    """CPU of the gateway (all its processes) and of clamd from now on, per message."""

    def __init__(self, gateway: Gateway | None, clamd_pid: int) -> None:
        self.gateway = gateway
        self.clamd_pid = clamd_pid
        self.gateway_start = family_cpu(gateway.process.pid) if gateway else 0.0
        self.clamd_start = cpu_seconds(clamd_pid)

    def per_message(self, messages: int) -> tuple[float, float]:
        """(gateway, clamd) CPU milliseconds per message since this meter was made."""
        gateway = family_cpu(self.gateway.process.pid) - self.gateway_start if self.gateway else 0.0
        clamd = cpu_seconds(self.clamd_pid) - self.clamd_start
        return gateway * 1000 / messages, clamd * 1000 / messages


@contextmanager
def gateway_for(config: Path | None, port: int) -> Iterator[Gateway | None]:
    """A gateway serving ``config`` on ``port`` for the block; None (the limit row) without."""
    gateway = Gateway(config, port) if config is not None else None
    try:
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()


class Gateway:
    """`mailmoat serve` in its own process with a given config."""

    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        # The log (events at INFO, as serve runs by default, and errors such as a worker that
        # died) is kept beside the config.
        self.log = config.with_suffix(".log")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def bench_dns(tmp: Path) -> tuple[Any, DnsProcess]:
    """DKIM keys, and a DNS server answering for bench.test (SPF for loopback, the DKIM key,
    DMARC p=reject) beside the test zones."""
    keys = authdata.make_keys(tmp)
    zone = authdata.make_zone(keys)
    zone.add("bench.test", "TXT", txt("v=spf1 ip4:127.0.0.1 -all"))
    zone.add("sel._domainkey.bench.test", "TXT", txt(f"v=DKIM1; k=rsa; p={keys.rsa_public_b64}"))
    zone.add("_dmarc.bench.test", "TXT", txt("v=DMARC1; p=reject"))
    return keys, DnsProcess(zone)


def main(total: int, quick: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-bench-"))
    keys, dns = bench_dns(tmp)
    line = "Numbers for the quarterly report are attached below, as agreed.\r\n"
    body = line * 70  # about 5 KB with the headers and signature
    signed = [authdata.sign_rsa(authdata.message("alice@bench.test", f"Report {n}", body), keys, "bench.test")
              for n in range(50)]  # fmt: skip
    corpus = [raw for _, raw in load_corpus()]
    random.Random(3).shuffle(corpus)
    mix = corpus[:300]
    big = authdata.message("alice@bench.test", "Big", "x" * 76 + "\r\n") + (
        b"A" * 76 + b"\r\n") * 13_500  # fmt: skip
    sink_port = free_port()
    sink = SinkProcess(sink_port).start()
    clamd = ClamdProcess(tmp / "clamd", stream_max="64M").start()
    all_checks = ["protocol", "headers", "antivirus", "content", "auth", "classifier"]

    def config(
        enabled: list[str], rules: bool, listen_port: int, backend_port: int = sink_port
    ) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "server": {"listen": f"127.0.0.1:{listen_port}", "metrics_listen": "", "pid_file": str(tmp / "pid"),
                       "max_connections": 500, "max_connections_per_ip": 500, "hostname": "mx.bench",
                       "accept_domains": ["example.test"]},
            "backend": {"kind": "smtp", "host": "127.0.0.1", "port": backend_port},
            "store": {"path": str(tmp / f"store-{len(enabled)}-{time.time()}"), "retain_sample_rate": 0.1},
            "antivirus": {"address": clamd.address},
            "dns": {"nameservers": [dns.address], "timeout": 2.0},
            "rules": {"enabled": rules},
        }  # fmt: skip
        for check in all_checks:
            sections[f"checks.{check}"] = {"enabled": check in enabled}
        return write_config(tmp / "gateway.toml", sections)

    rows: list[list[Any]] = []
    shapes = SHAPES if not quick else [(10, 10), (50, 10)]
    scenarios: list[tuple[str, list[str] | None, bool]] = [
        ("1. limit: generator -> sink", None, False),
        ("2. pass-through (all checks off)", [], False),
        ("3. full pipeline", all_checks, True),
    ]
    if not quick:
        scenarios += [(f"4. {c} alone", [c], False) for c in all_checks] + [
            ("4. rules alone", [], True)
        ]
    for name, enabled, rules in scenarios:
        gateway_port = free_port()
        gateway_config = config(enabled, rules, gateway_port) if enabled is not None else None
        with gateway_for(gateway_config, gateway_port) as gateway:
            port = gateway_port if gateway else sink_port
            asyncio.run(load(port, signed, 4, 5))  # warm-up: caches, model, clamd
            meter = CpuMeter(gateway, clamd.process.pid)  # type: ignore[union-attr]
            results = {}
            for concurrency, per_session in shapes:
                results[(concurrency, per_session)] = asyncio.run(
                    load(port, signed, concurrency, per_session, total)
                )
            sent = sum(r["sent"] for r in results.values())
            if not sent:
                raise RuntimeError(f"{name}: no message was accepted")
            cpu, clamd_cpu = meter.per_message(sent)
            lat = results.get((10, 10), next(iter(results.values())))["latencies"]
            row = [name] + [f"{results[s]['rate']:.0f}" if s in results else "" for s in SHAPES]
            row += [percentile(lat, 50), percentile(lat, 95), percentile(lat, 99), f"{cpu:.2f}",
                    f"{clamd_cpu:.2f}", f"{family_peak_mib(gateway.process.pid):.0f}" if gateway else ""]  # fmt: skip
            extra = {}
            if gateway and enabled == all_checks:
                extra["mix"] = asyncio.run(load(port, mix, 10, 10))["rate"]
                extra["1MB"] = asyncio.run(load(port, [big] * 20, 4, 5))["rate"]
            rows.append(row)
            if extra:
                blank = [""] * (len(SHAPES) + 5)  # the columns these two rows do not measure
                rows.append(["   full, corpus mix (c10x10)", f"{extra['mix']:.0f}", *blank])
                rows.append(["   full, 1 MB message (c4x5)", f"{extra['1MB']:.1f}", *blank])
        print(f"done: {name}", file=sys.stderr, flush=True)
    sink.stop()
    postfix = postfix_rows(tmp, signed[0], all_checks, config, clamd.process.pid, total * 4)  # type: ignore[union-attr]
    clamd.stop()
    print(
        f"{len(signed[0]) / 1024:.1f} KiB DKIM-signed messages, {total} per cell; "
        f"gateway workers: {os.cpu_count()} (one per core); latency columns at c10x10"
    )
    headers = ["row", *(f"c{c}x{m}" for c, m in SHAPES), "p50 ms", "p95 ms", "p99 ms",
               "gw CPU ms/msg", "clamd CPU ms/msg", "peak MiB per gw process"]  # fmt: skip
    print("msg/s at cNxM: N concurrent sessions of M messages each")
    print(table(headers, rows))
    c50x10 = 1 + SHAPES.index((50, 10))
    p99 = 1 + len(SHAPES) + 2
    limit = float(rows[0][c50x10])
    passthrough = float(rows[1][c50x10])
    full = next(r for r in rows if r[0].startswith("3."))
    print(f"full pipeline at c50x10: {float(full[c50x10]) / limit:.1%} of the limit (target 6%), "
          f"{float(full[c50x10]) / passthrough:.1%} of pass-through (target 40%); "
          f"p99 at c10x10 {float(full[p99]):.1f} ms (target 50)")  # fmt: skip
    if postfix:
        print(f"\nWith Postfix's smtp-source and smtp-sink, {total * 4} messages per cell:")
        print(
            table(
                ["row", "msg/s s50 -d", "s10 (1 per session)", "gw CPU ms/msg", "clamd CPU ms/msg"],
                postfix,
            )
        )
        print(f"full pipeline at s50: {float(postfix[2][1]) / float(postfix[0][1]):.1%} of the limit, "
              f"{float(postfix[2][1]) / float(postfix[1][1]):.1%} of pass-through")  # fmt: skip


def postfix_tool(name: str) -> str | None:
    """A Postfix test program, if installed (Debian puts them in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def postfix_rows(
    tmp: Path, message: bytes, all_checks: list[str], config: Any, clamd_pid: int, total: int
) -> list[list[str]]:
    """Rows 1-3 again with smtp-source as generator and smtp-sink as sink; [] without them."""
    source, sink = postfix_tool("smtp-source"), postfix_tool("smtp-sink")
    if source is None or sink is None:
        print("Postfix's smtp-source/smtp-sink not installed: no second table", file=sys.stderr)
        return []
    # smtp-source ends each line of the file with CRLF itself: give it LF lines.
    message_file = tmp / "message.eml"
    message_file.write_bytes(message.replace(b"\r\n", b"\n"))
    sink_port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink will not run as root
    sink_process = subprocess.Popen([sink, *user, f"127.0.0.1:{sink_port}", "1024"])
    rows: list[list[str]] = []
    try:
        for name, enabled, rules in [("1. limit: smtp-source -> smtp-sink", None, False),
                                     ("2. pass-through", [], False),
                                     ("3. full pipeline", all_checks, True)]:  # fmt: skip
            gateway_port = free_port()
            gateway_config = None
            if enabled is not None:
                gateway_config = config(enabled, rules, gateway_port, sink_port)
                gateway_config = gateway_config.rename(tmp / f"pf-{gateway_port}.toml")
            with gateway_for(gateway_config, gateway_port) as gateway:
                port = gateway_port if gateway else sink_port
                run_source(source, message_file, port, ["-s", "4", "-m", "40"])  # warm-up
                meter = CpuMeter(gateway, clamd_pid)
                rates = [total / run_source(source, message_file, port, ["-s", "50", "-d", "-m", str(total)]),
                         total / run_source(source, message_file, port, ["-s", "10", "-m", str(total)])]  # fmt: skip
                cpu, clamd_cpu = meter.per_message(2 * total)
                rows.append([name, *(f"{r:.0f}" for r in rates), f"{cpu:.2f}", f"{clamd_cpu:.2f}"])
            print(f"done: Postfix {name}", file=sys.stderr, flush=True)
    finally:
        sink_process.terminate()
        sink_process.wait(10)
    return rows


def run_source(source: str, message_file: Path, port: int, options: list[str]) -> float:
    """Seconds smtp-source takes; it stops at the first reply that is not a success."""
    started = time.perf_counter()
    subprocess.run(
        [source, *options, "-F", str(message_file), "-f", "alice@bench.test",
         "-t", "bob@example.test", "-M", "client.bench.test", f"127.0.0.1:{port}"],
        check=True, timeout=600, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per cell")
    parser.add_argument("--quick", action="store_true", help="rows 1-3 only, two shapes")
    args = parser.parse_args()
    main(args.messages, args.quick)
