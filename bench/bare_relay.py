"""The Python floor: a bare aiosmtpd relay, N processes on one socket, uvloop.

Run (by bench.peers):  python -m bench.bare_relay HOST PORT SINK_PORT PROCESSES

Nothing but SMTP in, SMTP out: aiosmtpd receives, aiosmtplib relays on a kept connection
(a small pool per process), 250 after the sink's 250. No parsing, no checks, no events.
What any Python gateway on aiosmtpd costs at least; Mailmoat's rows are judged against it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import aiosmtplib
import uvloop
from aiosmtpd.smtp import SMTP


class Relay:
    """aiosmtpd handler: each message to the sink, over pooled connections."""

    def __init__(self, sink_port: int) -> None:
        self.sink_port = sink_port
        self.pool: list[aiosmtplib.SMTP] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        client = self.pool.pop() if self.pool else None
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.sink_port, timeout=60)
            await client.connect()
        try:
            await client.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        except aiosmtplib.SMTPException as exc:
            client.close()
            return f"451 4.4.1 relay failed: {exc}"[:200]
        self.pool.append(client)
        return "250 2.0.0 OK"


def serve(sock: socket.socket, sink_port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay = Relay(sink_port)
        server = await loop.create_server(
            lambda: SMTP(relay, hostname="bare.bench", decode_data=False), sock=sock
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def main() -> None:
    host, port, sink_port, processes = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            serve(sock, sink_port)
            os._exit(0)
        children.append(pid)
    print("ready", flush=True)

    def stop(*_: Any) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
