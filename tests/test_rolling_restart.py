"""Replacing a running gateway loses no mail and refuses no connection (socket activation).

Real parts: the test holds the listening socket as systemd does (LISTEN_FDS), two real
`mailmoat serve` processes (two workers each) take turns on it while a burst of real SMTP
clients runs, relaying to a real sink. A client retries a 4xx as an MTA would.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiosmtplib

from tests.conftest import message

ROOT = Path(__file__).resolve().parents[1]
# Start mailmoat serve with the socket as fd 3 and LISTEN_PID set to its own pid (the pid
# is only known in the child: a small exec wrapper, as systemd itself does it).
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
    "os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', 'serve', '--config', sys.argv[2]])"
)
MESSAGES = 240
CLIENTS = 12


async def start(sock: socket.socket, config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", ACTIVATE, str(sock.fileno()), str(config),
        pass_fds=(sock.fileno(),), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_a_gateway_replaced_mid_burst_refuses_nothing_and_loses_nothing(
    sink, config_factory, tmp_path
):
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]
    config = config_factory(
        sink.port, server={"listen": f"127.0.0.1:{port}", "workers": 2, "shutdown_grace": 20.0}
    )
    old = await start(listener, config)
    acknowledged: list[str] = []
    refused: list[str] = []  # connections refused, reset or closed before the greeting
    deferred = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(MESSAGES):
        queue.put_nowait(n)

    async def client() -> None:
        nonlocal deferred
        while not queue.empty():
            n = queue.get_nowait()
            subject = f"rolling-{n}"
            while True:  # as an MTA: a 4xx, or a connection closed after it, is tried again
                # No STARTTLS probe: connect() then reads the greeting alone (no EHLO), so
                # that a failure here is a connection that got no greeting.
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30,
                                       start_tls=False)  # fmt: skip
                try:
                    await smtp.connect()  # the greeting: a refusal does not get one
                except aiosmtplib.SMTPResponseException as answer:  # a 421 greeting
                    if not 400 <= answer.code < 500:
                        raise
                    deferred += 1
                    await asyncio.sleep(0.1)
                    continue
                except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected,
                        ConnectionError, TimeoutError) as exc:  # fmt: skip
                    refused.append(f"{subject}: {exc!r}")
                    await asyncio.sleep(0.1)
                    continue
                try:
                    await smtp.sendmail("a@sender.test", ["bob@example.test"],
                                        message(subject=subject))  # fmt: skip
                except aiosmtplib.SMTPResponseException as answer:
                    if not 400 <= answer.code < 500:
                        raise  # a 5xx would be a loss: the test fails with it
                    deferred += 1
                    await asyncio.sleep(0.1)
                    continue
                except aiosmtplib.SMTPServerDisconnected:  # a draining server's 421 and close
                    deferred += 1
                    await asyncio.sleep(0.1)
                    continue
                finally:
                    smtp.close()
                acknowledged.append(subject)
                if len(acknowledged) == MESSAGES // 3:
                    a_third.set()
                break

    a_third = asyncio.Event()
    burst = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    processes = [old]
    try:
        await asyncio.wait_for(a_third.wait(), 60)
        # The replacement: the old gateway drains (SIGTERM), the new one starts at once on
        # the same socket; clients in between wait in its backlog.
        old.send_signal(signal.SIGTERM)
        processes.append(await start(listener, config))
        async with asyncio.timeout(120):
            await asyncio.gather(*burst)
            assert await old.wait() == 0
        arrived = {m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                   for m in await sink.wait_for(MESSAGES, timeout=30)}  # fmt: skip
    finally:
        for task in burst:
            task.cancel()
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        listener.close()
    print(f"acknowledged {len(acknowledged)}, deferred and retried {deferred}, "
          f"refused {len(refused)}")  # fmt: skip
    assert refused == []
    assert len(acknowledged) == MESSAGES
    assert set(acknowledged) - arrived == set()  # acknowledged but missing: none
