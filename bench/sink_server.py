"""A counting SMTP sink in its own process, for benchmarks: ``PORT [RECORD_FILE]``.

With a record file, the value of each delivered message's ``X-Soak-Id`` header is appended
to it (one line, written before the 250), so a soak run can count what reached the store.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP

from bench.common import ROOT

SOAK_ID = re.compile(rb"^X-Soak-Id: *(\S+)", re.MULTILINE | re.IGNORECASE)


class SinkProcess:
    """This sink in its own process (restartable on the same port and record file)."""

    def __init__(self, port: int, record: Path | None = None) -> None:
        self.port, self.record = port, record
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SinkProcess:
        extra = [str(self.record)] if self.record is not None else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink_server", str(self.port), *extra],
            cwd=ROOT, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.process.stdout.readline()  # type: ignore[union-attr]  # "ready"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


class CountingHandler:
    def __init__(self, record_fd: int | None = None) -> None:
        self.count = 0
        self.record_fd = record_fd

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.record_fd is not None:
            head = envelope.content.split(b"\r\n\r\n", 1)[0]
            found = SOAK_ID.search(head)
            os.write(self.record_fd, (found.group(1) if found else b"-") + b"\n")
        return "250 2.0.0 Ok"


async def main(port: int, record: str | None) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if record else None
    handler = CountingHandler(fd)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, data_size_limit=128 * 2**20),
        "127.0.0.1",
        port,
        reuse_address=True,
        backlog=1024,  # the gateway's sessions reconnect at once after a restart
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
