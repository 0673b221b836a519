"""Per-node throughput with the PostgreSQL store against the SQLite store, in one run.

Run:  .venv/bin/python -m bench.stores [--messages N]

One node (`mailmoat serve`, two workers, its own process) relaying to a sink process, with
each store in turn: the embedded SQLite file, and Debian's PostgreSQL (started here in a
private directory, as the tests do; on this same 2-core machine, so its CPU competes with
the gateway's, as it would not on a database server of its own). Rows: pass-through (every
check off: the store's share of the work is largest) on a fixed, seeded sample of real
corpus messages, and the full pipeline (clamd, SPF/DKIM/DMARC against a loopback DNS
server, content, classifier, starter rules) on DKIM-signed messages. Each row checks that
every message accepted has its event in the store. Columns: messages/s at c10x10 and
c50x10, p50/p99 latency at c10x10, CPU ms per message of the gateway and of PostgreSQL.
docs/scaling.md turns these figures into node counts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import load_corpus, percentile, table
from bench.sink_server import SinkProcess
from bench.throughput import CpuMeter, Gateway, bench_dns, family_cpu, load
from gateway.events import EventFilter
from gateway.store import SqliteStore, Store
from gateway.store.postgres import PostgresStore
from tests import authdata, pgserver
from tests.clamav import ClamdProcess
from tests.conftest import free_port, write_config

SHAPES = [(10, 10), (50, 10)]
ALL_CHECKS = ["protocol", "headers", "antivirus", "content", "auth", "classifier"]


def main(total: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-bench-stores-"))
    keys, dns = bench_dns(tmp)
    line = "Numbers for the quarterly report are attached below, as agreed.\r\n"
    signed = [authdata.sign_rsa(authdata.message("alice@bench.test", f"Report {n}", line * 70),
                                keys, "bench.test") for n in range(50)]  # fmt: skip
    corpus = [raw for _, raw in load_corpus()]
    random.Random(3).shuffle(corpus)
    mix = corpus[:300]
    sink_port = free_port()
    sink = SinkProcess(sink_port).start()
    clamd = ClamdProcess(tmp / "clamd", stream_max="64M").start()
    postgres = pgserver.PostgresInstance(free_port()).start()
    rows: list[list[Any]] = []
    try:
        for engine in ("sqlite", "postgres"):
            for name, checks, messages in (("pass-through", [], mix),
                                           ("full pipeline", ALL_CHECKS, signed)):  # fmt: skip
                url = ""
                if engine == "postgres":
                    url = postgres.new_database()
                    migrator = PostgresStore(url, check_schema=False)
                    migrator.migrate()
                    migrator.close()
                port = free_port()
                store_path = tmp / f"store-{engine}-{len(checks)}"
                config = write_config(tmp / "gateway.toml", {
                    "server": {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "workers": 2,
                               "pid_file": str(tmp / "pid"), "max_connections": 500,
                               "max_connections_per_ip": 500, "hostname": "mx.bench",
                               "accept_domains": ["example.test"]},
                    "backend": {"kind": "smtp", "host": "127.0.0.1", "port": sink_port},
                    "store": {"path": str(store_path), "url": url, "retain_sample_rate": 0.1},
                    "antivirus": {"address": clamd.address},
                    "dns": {"nameservers": [dns.address], "timeout": 2.0},
                    "rules": {"enabled": bool(checks)},
                    **{f"checks.{c}": {"enabled": c in checks} for c in ALL_CHECKS},
                })  # fmt: skip
                gateway = Gateway(config, port)
                try:
                    asyncio.run(load(port, messages, 4, 5))  # warm-up
                    meter = CpuMeter(gateway, clamd.process.pid)  # type: ignore[union-attr]
                    pg_start = postgres_cpu(postgres)
                    results = {s: asyncio.run(load(port, messages, *s, total)) for s in SHAPES}
                    sent = sum(r["sent"] for r in results.values())
                    gateway_ms, _ = meter.per_message(sent)
                    pg_ms = (postgres_cpu(postgres) - pg_start) * 1000 / sent
                finally:
                    gateway.stop()
                store: Store = (
                    PostgresStore(url) if url else SqliteStore(store_path / "events.sqlite3")
                )
                stored = len(store.list(EventFilter(kind="message", limit=10 * (sent + 100))))
                store.close()
                if stored < sent + 20:  # the warm-up's 20 too
                    raise RuntimeError(f"{engine} {name}: {sent + 20} accepted, {stored} events")
                lat = results[(10, 10)]["latencies"]
                rows.append([engine, name, f"{results[(10, 10)]['rate']:.0f}",
                             f"{results[(50, 10)]['rate']:.0f}", percentile(lat, 50),
                             percentile(lat, 99), f"{gateway_ms:.2f}",
                             f"{pg_ms:.2f}" if url else "-"])  # fmt: skip
                print(f"done: {engine} {name}", file=sys.stderr, flush=True)
    finally:
        postgres.cleanup()
        clamd.stop()
        sink.stop()
    print(table(["store", "row", "msg/s c10x10", "msg/s c50x10", "p50 ms", "p99 ms",
                 "gateway CPU ms/msg", "PostgreSQL CPU ms/msg"], rows))  # fmt: skip
    by = {(r[0], r[1]): float(r[3]) for r in rows}
    for name in ("pass-through", "full pipeline"):
        ratio = by[("postgres", name)] / by[("sqlite", name)]
        print(f"{name}: PostgreSQL store at {ratio:.0%} of the SQLite store's rate (c50x10)")


def postgres_cpu(instance: pgserver.PostgresInstance) -> float:
    """CPU seconds of the PostgreSQL server and its backends so far."""
    pid = int((instance.data / "postmaster.pid").read_text().split()[0])
    return family_cpu(pid)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per cell")
    main(parser.parse_args().messages)
