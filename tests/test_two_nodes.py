"""Two gateway nodes on one PostgreSQL and one Redis: one site, no single node it needs.

Real parts: two `mailmoat serve` processes (their own listen ports, two workers each), Debian's
PostgreSQL and Redis started by the tests, a shared quarantine directory, the console served
beside node B (uvicorn, a real HTTP client with its cookie), a real sink behind both.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiosmtplib
import uvicorn

from gateway.config import load_settings
from gateway.events import EventFilter
from gateway.store.postgres import PostgresStore
from gateway.web.app import create_app
from gateway.web.security import hash_password
from tests.conftest import free_port, hold_rules, message

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def node_config(config_factory, sink, tmp_path, name, postgres_url, redis_url):
    rules = hold_rules(tmp_path / "rules")
    port = free_port()
    written = config_factory(
        sink.port,
        # One loopback address stands for many MTAs here: no per-address connection limit.
        server={"listen": f"127.0.0.1:{port}", "workers": 2, "max_connections_per_ip": 500,
                "pid_file": str(tmp_path / f"{name}.pid")},
        store={"path": str(tmp_path / "shared"), "url": postgres_url, "timeout": 2.0},
        redis={"url": redis_url},
        ratelimit={"sender": {"per_minute": 0.01, "burst": 3}},
        rules={"enabled": True, "paths": [str(rules)]},
    )  # fmt: skip
    config = tmp_path / f"{name}.toml"
    config.write_text(written.read_text())
    return config, port


async def start_node(config: Path, port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config), cwd=ROOT,
        start_new_session=True, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5):
                return process
        except (OSError, aiosmtplib.SMTPException):
            await asyncio.sleep(0.2)
    raise AssertionError(f"node on port {port} did not start")


async def send(port: int, sender: str, subject: str) -> int:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        try:
            await client.sendmail(sender, ["bob@example.test"], message(subject=subject))
        except aiosmtplib.SMTPResponseException as refused:
            return refused.code
    return 250


def started(server: uvicorn.Server) -> None:
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)


def console_release(base: str, message_id: str) -> str:
    """Log in as an admin and press Release on the held message; the page it lands on."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def csrf_of(page: str) -> str:
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    login = opener.open(f"{base}/login", timeout=10).read().decode()
    form = {"username": "adam", "password": PASSWORD, "csrf": csrf_of(login), "next": "/quarantine"}
    page = opener.open(f"{base}/login", urllib.parse.urlencode(form).encode(), timeout=10)
    held = page.read().decode()
    assert message_id in held
    release = urllib.parse.urlencode({"csrf": csrf_of(held)}).encode()
    done = opener.open(f"{base}/quarantine/{message_id}/release", release, timeout=30)
    return done.read().decode()


async def test_two_nodes_share_events_quarantine_and_limits_and_survive_a_kill(
    sink, config_factory, postgres_url, redis_server, tmp_path
):
    config_a, port_a = node_config(config_factory, sink, tmp_path, "a", postgres_url,
                                   redis_server.url)  # fmt: skip
    config_b, port_b = node_config(config_factory, sink, tmp_path, "b", postgres_url,
                                   redis_server.url)  # fmt: skip
    node_a = await start_node(config_a, port_a)
    node_b = await start_node(config_b, port_b)
    server = None
    try:
        # Mail through both: one event log.
        assert await send(port_a, "one@sender.test", "via A") == 250
        assert await send(port_b, "two@sender.test", "via B") == 250
        # A rate limit counted across both nodes (burst 3 for one sender).
        codes = [await send(port, "bulk@sender.test", "bulk") for port in
                 (port_a, port_b, port_a, port_b)]  # fmt: skip
        assert codes == [250, 250, 250, 451]
        # Held by node A, released from the console beside node B.
        assert await send(port_a, "three@sender.test", "hold me") == 250
        store = PostgresStore(postgres_url)
        [held] = store.list(EventFilter(action="quarantine", limit=10))
        store.add_user("adam", hash_password(PASSWORD), "admin")
        settings_b = load_settings(config_b)
        web_port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings_b), host="127.0.0.1",
                                               port=web_port, log_level="warning"))  # fmt: skip
        threading.Thread(target=server.run, daemon=True).start()
        await asyncio.to_thread(started, server)
        await asyncio.to_thread(console_release, f"http://127.0.0.1:{web_port}", held.id)
        assert store.held(held.id).status == "released"
        # Node A killed -9 in the middle of a burst: the senders go on to node B (as MTAs
        # try the next MX); nothing acknowledged is missing.
        acknowledged: list[str] = []
        failures: list[str] = []
        first_via_a = asyncio.Event()

        async def burst(n: int) -> None:
            subject = f"burst-{n}"
            for port in (port_a, port_b, port_b):
                try:
                    code = await send(port, f"s{n}@sender.test", subject)
                    if code == 250:
                        acknowledged.append(subject)
                        if port == port_a:
                            first_via_a.set()
                        return
                    failures.append(f"{subject}: {code}")
                except (OSError, aiosmtplib.SMTPException) as exc:
                    failures.append(f"{subject}: {exc!r}")
                    await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(burst(n)) for n in range(60)]
        # Killed once node A has acknowledged a first message of the burst (a fixed delay
        # could come after the whole burst on a loaded machine, and test nothing).
        await asyncio.wait_for(first_via_a.wait(), 60)
        os.killpg(node_a.pid, signal.SIGKILL)
        acknowledged_before_kill = len(acknowledged)
        await asyncio.gather(*tasks)
        print(f"node A killed mid-burst after {acknowledged_before_kill} acknowledgements: "
              f"{len(failures)} attempts failed and were retried on B")  # fmt: skip
        assert acknowledged_before_kill < 60  # the kill did come in the middle of the burst
        assert len(acknowledged) == 60, failures
        arrived = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
                   for m in await sink.wait_for(len(sink.messages), timeout=5)}  # fmt: skip
        deadline = time.monotonic() + 10
        while set(acknowledged) - arrived and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            arrived = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
                       for m in sink.messages}  # fmt: skip
        assert set(acknowledged) - arrived == set()
        # One event log for the site: `events list` beside either node shows both nodes' mail.
        listed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "events", "list", "--config", str(config_b),
            "--json", "--limit", "500", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await listed.communicate()
        subjects = {json.loads(line)["subject"] for line in out.splitlines()}
        assert {"via A", "via B", "hold me", "burst-0"} <= subjects
        [limited] = store.list(EventFilter(kind="mail_deferred", limit=10))
        assert limited.reason == "rate limit: sender bulk@sender.test"
        store.close()
    finally:
        if server is not None:
            server.should_exit = True
        for node in (node_a, node_b):
            if node.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGTERM)
            await asyncio.wait_for(node.wait(), 30)
