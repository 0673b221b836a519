# ruff: noqa: E501 - long literal rows of the benchmark table
"""Mailmoat behind Debian's real Postfix: milter rows beside before-queue proxy rows.

Run:  .venv/bin/python -m bench.milter [--messages N]   (needs root and `apt-get install postfix`)

One run, one machine, the same messages (5 KiB, DKIM-signed, with SPF/DKIM/DMARC records on a
DNS server in this process): Postfix's smtp-source sends N messages over 20 sessions to a
private Postfix (tests/postfix.py), which relays to Postfix's smtp-sink. Rows:

1. Postfix alone: the limit of this path;
2. Postfix -> Mailmoat milter, every check off (the milter front's own cost);
3. Postfix -> Mailmoat milter, every check on (clamd, auth, content, classifier, rules);
4. Postfix -> Mailmoat before-queue proxy (smtpd_proxy_filter) -> Postfix, every check on.

Columns: messages a second accepted by Postfix (smtp-source's run: with a milter or proxy, a
250 means Mailmoat has decided), messages a second end to end (until Postfix's queue is
empty), and CPU milliseconds per message of Mailmoat (all its processes) and of clamd.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import table
from bench.throughput import Gateway, bench_dns, cpu_seconds, family_cpu, postfix_tool
from tests import authdata
from tests.clamav import ClamdProcess
from tests.conftest import free_port, write_config
from tests.postfix import PostfixInstance, available, snippet

ALL_CHECKS = ["protocol", "headers", "antivirus", "content", "auth", "classifier"]


def wait_for_empty_queue(postfix: PostfixInstance, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Mail queue is empty" in postfix.queue():
            return
        time.sleep(0.2)
    raise RuntimeError("Postfix's queue did not drain")


def main(total: int) -> None:
    if not available():
        sys.exit("bench.milter needs Debian's postfix and root")
    source, sink = postfix_tool("smtp-source"), postfix_tool("smtp-sink")
    if source is None or sink is None:
        sys.exit("bench.milter needs Postfix's smtp-source and smtp-sink")
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-bench-milter-"))
    keys, dns = bench_dns(tmp)
    body = "Numbers for the quarterly report are attached below, as agreed.\r\n" * 70
    message = authdata.sign_rsa(
        authdata.message("alice@bench.test", "Report", body), keys, "bench.test"
    )
    message_file = tmp / "message.eml"
    message_file.write_bytes(message.replace(b"\r\n", b"\n"))  # smtp-source adds the CRs
    clamd = ClamdProcess(tmp / "clamd", stream_max="64M").start()
    sink_port = free_port()
    sink_process = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])

    def gateway_config(
        enabled: list[str], smtp_port: int, milter_port: int, backend_port: int
    ) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "server": {"listen": f"127.0.0.1:{smtp_port}" if smtp_port else "", "metrics_listen": "",
                       "pid_file": str(tmp / "pid"), "max_connections": 500,
                       "max_connections_per_ip": 500, "hostname": "mx.bench",
                       "accept_domains": ["example.test"]},
            "milter": {"listen": f"127.0.0.1:{milter_port}" if milter_port else ""},
            "backend": {"kind": "smtp", "host": "127.0.0.1", "port": backend_port},
            "store": {"path": str(tmp / f"store-{time.time()}"), "retain_sample_rate": 0.1},
            "antivirus": {"address": clamd.address},
            "dns": {"nameservers": [dns.address], "timeout": 2.0},
            "rules": {"enabled": bool(enabled)},
        }  # fmt: skip
        for check in ALL_CHECKS:
            sections[f"checks.{check}"] = {"enabled": check in enabled}
        return write_config(tmp / f"gateway-{time.time()}.toml", sections)

    scenarios = [
        ("1. Postfix alone (the limit)", None, []),
        ("2. Postfix + milter, checks off", "milter", []),
        ("3. Postfix + milter, every check", "milter", ALL_CHECKS),
        ("4. Postfix + proxy filter, every check", "proxy", ALL_CHECKS),
    ]
    rows = []
    try:
        for name, mode, enabled in scenarios:
            port, reinject, gw_smtp, gw_milter = free_port(), free_port(), free_port(), free_port()
            gateway = None
            if mode is None:
                main_cf, master = {}, ""
            else:
                ports = {10025: gw_smtp, 11332: gw_milter, 10026: reinject}
                main_cf, master = snippet(mode, port, ports)
                config = gateway_config(enabled, gw_smtp if mode == "proxy" else 0,
                                        gw_milter if mode == "milter" else 0, reinject)  # fmt: skip
                gateway = Gateway(config, gw_milter if mode == "milter" else gw_smtp)
            postfix = PostfixInstance(port, sink_port, main_cf, master).start()
            try:
                run = [source, "-s", "20", "-F", str(message_file), "-f", "alice@bench.test",
                       "-t", "bob@example.test", "-M", "client.bench.test", f"127.0.0.1:{port}"]  # fmt: skip
                subprocess.run([*run[:1], "-m", "40", *run[1:]], check=True, timeout=600,
                               stdout=subprocess.DEVNULL)  # fmt: skip  # warm-up
                wait_for_empty_queue(postfix)
                gw_cpu = family_cpu(gateway.process.pid) if gateway else 0.0
                clamd_cpu = cpu_seconds(clamd.process.pid)  # type: ignore[union-attr]
                started = time.perf_counter()
                subprocess.run([*run[:1], "-m", str(total), *run[1:]], check=True, timeout=900,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                accepted = time.perf_counter() - started
                wait_for_empty_queue(postfix)
                delivered = time.perf_counter() - started
                gw_ms = (
                    (family_cpu(gateway.process.pid) - gw_cpu) * 1000 / total if gateway else 0.0
                )
                clamd_ms = (cpu_seconds(clamd.process.pid) - clamd_cpu) * 1000 / total  # type: ignore[union-attr]
                rows.append([name, f"{total / accepted:.0f}", f"{total / delivered:.0f}",
                             f"{gw_ms:.2f}" if gateway else "", f"{clamd_ms:.2f}"])  # fmt: skip
            finally:
                postfix.stop()
                if gateway is not None:
                    gateway.stop()
            print(f"done: {name}", file=sys.stderr, flush=True)
    finally:
        sink_process.terminate()
        sink_process.wait(10)
        clamd.stop()
    print(f"{len(message) / 1024:.1f} KiB DKIM-signed message, {total} per row, smtp-source -s 20; "
          f"Mailmoat workers: {os.cpu_count()}")  # fmt: skip
    print(
        table(
            [
                "row",
                "accepted msg/s",
                "end to end msg/s",
                "Mailmoat CPU ms/msg",
                "clamd CPU ms/msg",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per row")
    main(parser.parse_args().messages)
