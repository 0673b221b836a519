# ruff: noqa: E501 - long literal rows of the benchmark table
"""Mailmoat beside its peers, in one run, on real corpus messages.

Run:  .venv/bin/python -m bench.peers [--messages N] [--quick]

Rows (each a server relaying to the same sink, measured back to back on this machine):

1. the limit: the generator straight to the sink;
2. a bare aiosmtpd relay, 2 processes, uvloop (bench/bare_relay.py): the Python floor;
3. Haraka 3 (from the npm registry, installed by this benchmark into var/bench/haraka, not a
   project dependency) with its spf, dkim (verify) and clamd plugins, 1 process and 2;
4. Mailmoat with every check off (pass-through), then with every check on (protocol,
   headers, antivirus, content, heuristics, auth, bulk, classifier, the starter rules).

Messages: a fixed, seeded sample of 50 SpamAssassin corpus messages of up to 20 KB (ham and
spam), each re-signed with DKIM (RSA 2048) by its own From domain, sent with that address as
the envelope sender; then one row each for a plain, an HTML, a PDF-carrying and a 1 MB
message (corpus messages; the PDF and the 1 MB payload are attached to them, since the
corpus has neither). A DNS server on loopback is authoritative for every name asked: SPF
(the client address), DKIM key and DMARC of each From domain; NXDOMAIN for anything else,
so no row waits on a timeout. clamd runs with `DisableCache yes` (a repeated message is not
free) and the project's signatures, on TCP for both Mailmoat and Haraka.

The client connects from 198.51.100.8 to servers on 198.51.100.7 (added to the loopback
interface; root only): Haraka's spf plugin skips clients in private address space such as
127.0.0.1, and a peer that skips a check is not measured doing it. Without root the rows
run on 127.0.0.1 and the output says Haraka skipped SPF.

Columns: msg/s at c10x10 and c50x10 (N sessions of M messages), latency p50/p95/p99 at
c10x10, CPU ms per message of the server (all its processes) and of clamd, and the peak
resident memory of the largest server process. Haraka's configuration is written by
`haraka_config()` below and documented in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dkim

from bench.common import ROOT, load_corpus, percentile, table
from bench.sink_server import SinkProcess
from bench.throughput import (
    ERRORS,
    REFUSED,
    DnsProcess,
    cpu_seconds,
    family,
    family_cpu,
    load,
    peak_rss_mib,
)
from gateway.message import ParsedMessage, crlf_line_ends
from tests import authdata
from tests.clamav import ClamdProcess
from tests.conftest import free_port, write_config
from tests.dnsserver import Zone, txt

HARAKA_VERSION = "3.3.4"
HARAKA_HOME = ROOT / "var" / "bench" / "haraka"
SERVER_IP, CLIENT_IP = "198.51.100.7", "198.51.100.8"
SHAPES = [(10, 10), (50, 10)]
PY_SPY = shutil.which("py-spy")
MAX_SAMPLE_BYTES = 20_000
_ADDRESS = re.compile(rb"^(?:from):.*?([\w.+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+))", re.I | re.M)


# --- messages -----------------------------------------------------------------------------


class Signer:
    """One RSA key; each From domain publishes it (selector "bench") with SPF and DMARC."""

    def __init__(self, tmp: Path, client_ip: str) -> None:
        self.keys = authdata.make_keys(tmp)
        self.zone = Zone()
        self.client_ip = client_ip
        self.domains: set[str] = set()

    def sign(self, raw: bytes) -> tuple[str, bytes] | None:
        """(envelope sender, re-signed message), or None when the From has no usable domain."""
        raw = crlf_line_ends(raw)
        match = _ADDRESS.search(raw.split(b"\r\n\r\n", 1)[0])
        if match is None:
            return None
        sender, domain = match.group(1).decode().lower(), match.group(2).decode().lower()
        head, _, body = raw.partition(b"\r\n\r\n")
        # The old signatures (and trace fields that name other hosts) would fail or mislead.
        kept = re.sub(
            rb"(?im)^(dkim-signature|domainkey-signature|authentication-results):.*(\r\n[ \t].*)*\r\n?",
            b"",
            head + b"\r\n",
        )
        raw = kept.rstrip(b"\r\n") + b"\r\n\r\n" + body
        if domain not in self.domains:
            self.domains.add(domain)
            self.zone.add(domain, "TXT", txt(f"v=spf1 ip4:{self.client_ip} -all"))
            self.zone.add(
                f"bench._domainkey.{domain}",
                "TXT",
                txt(f"v=DKIM1; k=rsa; p={self.keys.rsa_public_b64}"),
            )
            self.zone.add(f"_dmarc.{domain}", "TXT", txt("v=DMARC1; p=none"))
        headers = [
            h
            for h in (b"from", b"to", b"subject", b"date", b"message-id")
            if re.search(rb"(?im)^" + h + rb":", raw)
        ]
        signature = dkim.sign(
            raw, b"bench", domain.encode(), self.keys.rsa_private, include_headers=headers
        )
        return sender, signature + raw


def minimal_pdf(text: str) -> bytes:
    """A small valid PDF with one page of text (what an invoice attachment looks like)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def with_attachment(raw: bytes, name: str, ctype: str, payload: bytes) -> bytes:
    """A corpus message turned into multipart/mixed with its text and one attachment."""
    message = ParsedMessage.parse(crlf_line_ends(raw))
    text = message.message.get_payload(decode=True) if not message.message.is_multipart() else b""
    head = b"".join(
        f"{k}: {v}\r\n".encode("utf-8", "replace")
        for k, v in message.message.items()
        if k.lower() in ("from", "to", "subject", "date", "message-id")
    )
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        head + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="bench-b"\r\n\r\n'
        b"--bench-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        + (text or b"See attached.\r\n")
        + b"\r\n--bench-b\r\nContent-Type: "
        + ctype.encode()
        + b'; name="'
        + name.encode()
        + b'"\r\nContent-Disposition: attachment; filename="'
        + name.encode()
        + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + encoded
        + b"--bench-b--\r\n"
    )


def sample(signer: Signer) -> tuple[list[tuple[str, bytes]], dict[str, tuple[str, bytes]]]:
    """50 seeded corpus messages, and the four named ones, each re-signed."""
    corpus = load_corpus()
    rng = random.Random(18)
    rng.shuffle(corpus)
    mixed: list[tuple[str, bytes]] = []
    for _, raw in corpus:
        if len(raw) <= MAX_SAMPLE_BYTES and (signed := signer.sign(raw)) is not None:
            mixed.append(signed)
        if len(mixed) == 50:
            break

    def first(predicate: Any) -> bytes:
        return next(raw for path, raw in corpus if predicate(path, raw))

    plain = first(lambda p, r: "ham" in p and 5_000 < len(r) < 6_500 and b"text/html" not in r
                  and b"multipart" not in r.lower())  # fmt: skip
    html = first(lambda p, r: p.startswith("spam") and 5_000 < len(r) < 9_000 and b"text/html" in r.lower()
                 and b"multipart" not in r.lower())  # fmt: skip
    pdf = with_attachment(
        plain, "invoice-2002.pdf", "application/pdf", minimal_pdf("Invoice 2002-117: 1,250.00 EUR")
    )
    big_payload = random.Random(1).randbytes(760_000)  # base64: about 1 MB on the wire
    big = with_attachment(first(lambda p, r: "ham" in p and b"multipart" not in r.lower() and 3_000 < len(r) < 8_000),
                          "backup.dat", "application/octet-stream", big_payload)  # fmt: skip
    named = {}
    for name, raw in (("plain", plain), ("HTML", html), ("PDF", pdf), ("1 MB", big)):
        signed = signer.sign(raw)
        assert signed is not None, name
        named[name] = signed
    return mixed, named


# --- servers ------------------------------------------------------------------------------


def wait_port(host: str, port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


class Server:
    """A server process (and its children) for one row."""

    def __init__(self, argv: list[str], host: str, port: int, what: str, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:  # fmt: skip
        out = log.open("ab") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=out,
                                        env={**os.environ, **(env or {})})  # fmt: skip
        wait_port(host, port, self.process, what)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def install_haraka() -> Path:
    """Haraka from the npm registry into var/bench/haraka (once); its `haraka` command."""
    binary = HARAKA_HOME / "node_modules" / ".bin" / "haraka"
    if not binary.exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed to install Haraka (apt-get install npm)")
        HARAKA_HOME.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(HARAKA_HOME),
                        f"Haraka@{HARAKA_VERSION}"], check=True, timeout=600)  # fmt: skip
    return binary


DNS_PLUGIN = """\
// Point Node's resolver (used by the spf and dkim plugins and for rDNS) at the benchmark's
// authoritative DNS server, so Haraka asks the same server as Mailmoat.
exports.register = function () {
  const servers = [process.env.BENCH_DNS]
  require('node:dns').setServers(servers)
  require('node:dns/promises').setServers(servers)
}
"""


def haraka_config(home: Path, binary: Path, host: str, port: int, sink_port: int, clamd_port: int,
                  nodes: int) -> Path:  # fmt: skip
    """A Haraka instance: spf, dkim verify, clamd, relay to the sink; logs at warn."""
    directory = home / f"haraka-{port}"
    subprocess.run([str(binary), "-i", str(directory)], check=True, stdout=subprocess.DEVNULL)
    config = directory / "config"
    (directory / "plugins" / "bench_dns.js").write_text(DNS_PLUGIN)
    files = {
        "smtp.ini": f"listen={host}:{port}\n" + (f"nodes={nodes}\n" if nodes > 1 else ""),
        "plugins": "bench_dns\nrcpt_to.in_host_list\nspf\ndkim\nclamd\nqueue/smtp_forward\n",
        "host_list": "example.test\n",
        "me": "haraka.bench\n",
        "log.ini": "[main]\nlevel=warn\n",
        "smtp_forward.ini": f"host=127.0.0.1\nport={sink_port}\nenable_tls=false\nmax_connections=100\n",
        "clamd.ini": f"clamd_socket=127.0.0.1:{clamd_port}\ntimeout=30\n[check]\nprivate_ip=true\nlocal_ip=true\n",
        "dkim.ini": "[sign]\nenabled=false\n[verify]\nenabled=true\ntimeout=29\n",
        "spf.ini": "[relay]\ncontext=sender\n",
        "databytes": "52428800\n",
    }
    for name, text in files.items():
        (config / name).write_text(text)
    return directory


def smtp_sink(port: int) -> subprocess.Popen[bytes] | None:
    """Postfix's smtp-sink (C) when installed, so the sink costs the rows little CPU."""
    binary = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin")
    if binary is None:
        return None
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "1024"])
    wait_port("127.0.0.1", port, process, "smtp-sink")
    return process


def add_addresses() -> bool:
    """The benchmark's server and client addresses on the loopback interface (root only)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    for address in (SERVER_IP, CLIENT_IP):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with socket.create_server((SERVER_IP, 0)) as server:
            socket.create_connection(server.getsockname(), 2, (CLIENT_IP, 0)).close()
    except OSError:
        return False
    return True


# --- the run ------------------------------------------------------------------------------


def top_entries(collapsed: Path, count: int = 15) -> list[list[Any]]:
    """The functions most often on CPU (self) and on the stack (total) in py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        weight = int(n)
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            inclusive[frame] += weight
    return [[name, f"{100 * own[name] / samples:.1f}%", f"{100 * inclusive[name] / samples:.1f}%"]
            for name, _ in own.most_common(count)]  # fmt: skip


def main(total: int, quick: bool, profile: Path | None = None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-peers-"))
    routed = add_addresses()
    host, source = (SERVER_IP, CLIENT_IP) if routed else ("127.0.0.1", None)
    client_ip = source or "127.0.0.1"
    signer = Signer(tmp, client_ip)
    mixed, named = sample(signer)
    dns = DnsProcess(signer.zone)
    haraka = install_haraka()
    sink_port = free_port()
    c_sink = smtp_sink(sink_port)
    sink = None if c_sink else SinkProcess(sink_port).start()
    clamd_port = free_port()
    clamd = ClamdProcess(tmp / "clamd", stream_max="64M",
                         extra=f"TCPSocket {clamd_port}\nTCPAddr 127.0.0.1\nDisableCache yes\n").start()  # fmt: skip
    assert clamd.process is not None
    all_checks = [
        "protocol",
        "headers",
        "antivirus",
        "content",
        "heuristics",
        "auth",
        "bulk",
        "classifier",
    ]

    def mailmoat(enabled: list[str], rules: bool, port: int) -> list[str]:
        sections: dict[str, dict[str, Any]] = {
            "server": {"listen": f"{host}:{port}", "metrics_listen": "", "pid_file": str(tmp / f"pid-{port}"),
                       "max_connections": 500, "max_connections_per_ip": 500, "hostname": "mx.bench",
                       "accept_domains": ["example.test"]},
            "backend": {"kind": "smtp", "host": "127.0.0.1", "port": sink_port},
            "store": {"path": str(tmp / f"store-{port}"), "retain_sample_rate": 0.1},
            "antivirus": {"address": f"127.0.0.1:{clamd_port}"},
            "dns": {"nameservers": [dns.address], "timeout": 2.0},
            "rules": {"enabled": rules},
        }  # fmt: skip
        for check in all_checks:
            sections[f"checks.{check}"] = {"enabled": check in enabled}
        config = write_config(tmp / f"gateway-{port}.toml", sections)
        return [sys.executable, "-m", "gateway", "serve", "--config", str(config)]

    rows: list[list[Any]] = []
    per_type: list[list[Any]] = []
    profiles: dict[str, list[list[Any]]] = {}
    scenarios: list[tuple[str, Any]] = [
        ("1. limit: generator -> sink", None),
        (
            "2. bare aiosmtpd relay, 2 processes, uvloop",
            lambda p: [sys.executable, "-m", "bench.bare_relay", host, str(p), str(sink_port), "2"],
        ),
        ("3. Haraka 3 (spf, dkim, clamd), 1 process", ("haraka", 1)),
        ("3. Haraka 3 (spf, dkim, clamd), 2 processes", ("haraka", 2)),
        ("4. Mailmoat, every check off", lambda p: mailmoat([], False, p)),
        ("5. Mailmoat, every check on", lambda p: mailmoat(all_checks, True, p)),
    ]
    if quick:
        scenarios = [s for s in scenarios if "2 processes" not in s[0] or "bare" in s[0]]
    for name, how in scenarios:
        port = free_port()
        server = None
        env = {"BENCH_DNS": dns.address}
        if how is None:
            target_host, target_port = "127.0.0.1", sink_port
        elif isinstance(how, tuple):
            directory = haraka_config(tmp, haraka, host, port, sink_port, clamd_port, how[1])
            server = Server(
                [str(haraka), "-c", str(directory)],
                host,
                port,
                name,
                env,
                tmp / f"haraka-{port}.log",
            )
            target_host, target_port = host, port
        else:
            server = Server(how(port), host, port, name, log=tmp / f"server-{port}.log")
            target_host, target_port = host, port
        src = source if server is not None else None
        spy = None
        if profile is not None and server is not None and "Mailmoat" in name:
            profile.mkdir(parents=True, exist_ok=True)
            spy_out = profile / f"{name[:2].strip('. ')}.txt"
            spy = subprocess.Popen([PY_SPY, "record", "--pid", str(server.pid), "--subprocesses", "--format", "raw",
                                    "--rate", "200", "--gil", "--output", str(spy_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1)
        try:
            asyncio.run(load(target_port, mixed, 4, 5, 40, target_host, src))  # warm-up
            before = family_cpu(server.pid) if server else 0.0
            clamd_before = cpu_seconds(clamd.process.pid)
            results = {
                shape: asyncio.run(load(target_port, mixed, *shape, total, target_host, src))
                for shape in SHAPES
            }
            sent = sum(r["sent"] for r in results.values())
            if not sent:
                raise RuntimeError(f"{name}: nothing was accepted: {ERRORS.most_common(3)}")
            cpu = ((family_cpu(server.pid) - before) * 1000 / sent) if server else 0.0
            clamd_cpu = (cpu_seconds(clamd.process.pid) - clamd_before) * 1000 / sent
            lat = results[(10, 10)]["latencies"]
            peak = max(peak_rss_mib(p) for p in family(server.pid)) if server else 0.0
            rows.append([name, *(f"{results[s]['rate']:.0f}" for s in SHAPES), percentile(lat, 50),
                         percentile(lat, 95), percentile(lat, 99), f"{cpu:.2f}", f"{clamd_cpu:.2f}",
                         f"{peak:.0f}" if server else ""])  # fmt: skip
            if server is not None and ("1 process" in name or "every check on" in name):
                for kind, message in named.items():
                    count = 40 if kind == "1 MB" else min(total, 300)
                    sessions = 4 if kind == "1 MB" else 10
                    r = asyncio.run(
                        load(target_port, [message], sessions, 5, count, target_host, src)
                    )
                    per_type.append([name, kind, f"{len(message[1]) / 1024:.1f}", f"{r['rate']:.1f}",
                                     percentile(r["latencies"], 50), percentile(r["latencies"], 99)])  # fmt: skip
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
                spy.wait(60)
                profiles[name] = top_entries(spy_out)
            if server is not None:
                server.stop()
        print(f"done: {name}", file=sys.stderr, flush=True)
    clamd.stop()
    if c_sink is not None:
        c_sink.terminate()
    if sink is not None:
        sink.stop()
    sizes = sorted(len(raw) for _, raw in mixed)
    print(f"{len(mixed)} corpus messages re-signed (median {sizes[len(sizes) // 2] / 1024:.1f} KiB, "
          f"{len(signer.domains)} From domains), {total} messages per cell; client {client_ip} -> "
          f"server {host}; sink: {'smtp-sink (Postfix, C)' if c_sink else 'aiosmtpd sink'}; "
          f"clamd DisableCache yes; Mailmoat workers: {os.cpu_count()}")  # fmt: skip
    if not routed:
        print("NOTE: not root: clients on 127.0.0.1, where Haraka's spf plugin skips the check")
    headers = ["row", *(f"c{c}x{m} msg/s" for c, m in SHAPES), "p50 ms", "p95 ms", "p99 ms",
               "server CPU ms/msg", "clamd CPU ms/msg", "peak MiB per process"]  # fmt: skip
    print(table(headers, rows))
    print()
    print(table(["row", "message", "KiB", "msg/s", "p50 ms", "p99 ms"], per_type))
    by_name = {r[0]: r for r in rows}
    full = by_name["5. Mailmoat, every check on"]
    haraka1 = by_name["3. Haraka 3 (spf, dkim, clamd), 1 process"]
    bare = by_name["2. bare aiosmtpd relay, 2 processes, uvloop"]
    passthrough = by_name["4. Mailmoat, every check off"]
    for column, shape in ((1, "c10x10"), (2, "c50x10")):
        print(f"{shape}: full pipeline {float(full[column]) / float(haraka1[column]):.2f}x Haraka (1 process; "
              f"target 2.5x), {float(full[column]) / float(bare[column]):.1%} of the bare relay (target 40%)")  # fmt: skip
    print(f"p99 at c10x10: {float(full[5]):.1f} ms (target 50); pass-through CPU "
          f"{float(passthrough[6]) / float(bare[6]):.2f}x the bare relay's (target 1.5x); "
          f"peak per Mailmoat process {full[8]} MiB (target 300)")  # fmt: skip
    for name, entries in profiles.items():
        print(
            f"\npy-spy, {name}: functions most often on CPU (self) and their share on the stack (total)"
        )
        print(table(["function (file)", "self", "total"], entries))
    if REFUSED:
        print(
            f"refused after DATA (counted as handled: scanned, then refused): {sum(REFUSED.values())}"
        )
    if ERRORS:
        print("not handled (deferred or refused before DATA):", json.dumps(ERRORS.most_common(5)))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per cell")
    parser.add_argument("--quick", action="store_true", help="fewer rows (no 2-process Haraka)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample Mailmoat's rows with py-spy (pip install py-spy) into DIR")  # fmt: skip
    args = parser.parse_args()
    if args.profile is not None and PY_SPY is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    main(args.messages, args.quick, args.profile)
