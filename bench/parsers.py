"""Parsers on the event loop against hostile shapes: time grows with the input, not its square.

Run:  .venv/bin/python -m bench.parsers [--lines 10000,20000,40000,80000]

Each row is one message whose single header is folded over N continuation lines (the attack
of issue 14: 40k lines held a worker 13 s), or whose body nests N multiparts, scanned by the
local checks (protocol, headers, content, classifier) and the staff rules, as the gateway
does after DATA. The last column divides by N: flat means linear.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import table
from gateway.config import PROJECT_ROOT, Settings
from gateway.context import Envelope, ScanContext
from gateway.pipeline import Pipeline


def folded_header(lines: int) -> bytes:
    fold = b"".join(b" word%d\r\n" % i for i in range(lines))
    return (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: folded\r\n"
        b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <f@example.org>\r\n"
        b"X-Folded: start\r\n" + fold + b"\r\nHello.\r\n"
    )


def nested_multipart(depth: int) -> bytes:
    head = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: nested\r\n"
    body = b"MZ fake executable\r\n"
    for level in range(depth, 0, -1):
        boundary = b"b%d" % level
        body = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary
            + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n"
        )  # fmt: skip
    return head + body


async def scan_seconds(pipeline: Pipeline, raw: bytes) -> tuple[float, str]:
    env = Envelope(
        id="bench.1",
        raw=raw,
        mail_from="alice@example.org",
        rcpts=("bob@example.org",),
        client_ip="192.0.2.1",
        helo="client.example.org",
    )
    started = time.perf_counter()
    result = await pipeline.scan(ScanContext(env))
    return time.perf_counter() - started, result.verdict.action.value


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="10000,20000,40000,80000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.lines.split(",")]
    off = {"enabled": False}
    settings = Settings(
        checks={"antivirus": off, "auth": off},
        rules={"paths": [PROJECT_ROOT / "rules"]},
    )
    pipeline = Pipeline.from_settings(settings)
    rows = []
    for n in sizes:
        for shape, raw in (("folded header", folded_header(n)), ("nested multipart", None)):
            if raw is None:
                depth = min(n // 100, 1000)  # the stdlib parser recurses per level
                raw = nested_multipart(depth)
                label = f"{shape}, depth {depth}"
                units = depth
            else:
                label = f"{shape}, {n} lines"
                units = n
            seconds, action = await scan_seconds(pipeline, raw)
            rows.append(
                [label, f"{len(raw) / 1e6:.2f}", f"{seconds * 1000:.1f}",
                 f"{seconds * 1e6 / units:.2f}", action]
            )  # fmt: skip
    await pipeline.aclose()
    print(table(["message", "MB", "scan ms", "us per line/level", "action"], rows))


if __name__ == "__main__":
    asyncio.run(main())
