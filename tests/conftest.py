"""Shared fixtures: a real SMTP sink, a gateway on loopback, config files in tmp dirs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import settings as hypothesis_settings

from gateway.config import DEFAULT_SCORES, Settings, load_settings
from gateway.events import EventFilter, SecurityEvent
from gateway.service import Gateway
from gateway.smtp.server import SmtpServer
from tests.sink import Sink

DATA = Path(__file__).parent / "data"

# CI runs the fuzz tests derandomized (the same examples each run, no flaky red builds);
# locally they explore new inputs each time, and what they find is kept as @example.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink().start()
    yield server
    await server.stop()


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write a config for a gateway in tmp_path relaying to ``backend_port``."""

    def make(backend_port: int | None = None, **sections: dict[str, Any]) -> Path:
        merged: dict[str, dict[str, Any]] = {
            "server": {
                "listen": "127.0.0.1:0",
                "hostname": "mx.test",
                "shutdown_grace": 5.0,
                "pid_file": str(tmp_path / "mailmoat.pid"),
                "metrics_listen": "",
                "workers": 1,
                # Not an open relay (the gateway refuses to start as one): the tests' domains.
                "accept_domains": [".test"],
            },
            "backend": (
                {"kind": "smtp", "host": "127.0.0.1", "port": backend_port}
                if backend_port is not None
                else {"kind": "maildir", "path": str(tmp_path / "maildir")}
            ),
            "store": {"path": str(tmp_path / "store")},
            "policy": {"scores_file": str(DEFAULT_SCORES)},
            # Tests that want clamd or DNS enable these checks with their own servers.
            "checks.antivirus": {"enabled": False},
            "checks.auth": {"enabled": False},
            # The model's score would blur the exact scores these tests check.
            "checks.classifier": {"enabled": False},
            # Tests use tests/data/rules/, never the production rules/.
            "rules": {"enabled": False},
        }
        for name, values in sections.items():
            key = name.replace("__", ".")
            if key == "backend" and values.get("kind") not in (None, merged[key].get("kind")):
                merged[key] = dict(values)  # another kind: none of the default's keys apply
            else:
                merged.setdefault(key, {}).update(values)
        return write_config(tmp_path / "mailmoat.toml", merged)

    return make


class RunningGateway:
    def __init__(self, gateway: Gateway, server: SmtpServer, port: int) -> None:
        self.gateway = gateway
        self.server = server
        self.port = port

    def events(self, **filters: Any) -> list[SecurityEvent]:
        return self.gateway.store.list(EventFilter(limit=1000, **filters))


@contextlib.asynccontextmanager
async def running_gateway(config: Path) -> AsyncIterator[RunningGateway]:
    settings: Settings = load_settings(config)
    gateway = Gateway(settings, config)
    server = SmtpServer(gateway)
    _, port = await server.start()
    try:
        yield RunningGateway(gateway, server, port)
    finally:
        await server.drain(grace=1.0)
        await gateway.aclose()


@pytest.fixture
async def gateway(sink: Sink, config_factory: Callable[..., Path]) -> AsyncIterator[RunningGateway]:
    async with running_gateway(config_factory(sink.port)) as running:
        yield running


def message(subject: str = "Hello", body: str = "Hi there.\r\n", **headers: str) -> bytes:
    """A well-formed message (CRLF line endings)."""
    fields = {
        "From": "Alice <alice@sender.test>",
        "To": "bob@example.test",
        "Subject": subject,
        "Date": "Sat, 21 Nov 2026 10:00:00 +0000",
        "Message-ID": "<m1@sender.test>",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return (head + "\r\n" + body).encode()


async def send_message(port: int, data: bytes, timeout: float = 30) -> aiosmtplib.SMTPResponse:
    """One message from a@sender.test to bob@example.test in its own session; the DATA reply
    (a refusal raises aiosmtplib's exception for that step)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout) as client:
        await client.mail("a@sender.test")
        await client.rcpt("bob@example.test")
        return await client.data(data)


async def smtp_dialogue(port: int, chunks: list[bytes], timeout: float = 10.0) -> bytes:
    """Send raw bytes (one chunk per step) and return everything the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        async with asyncio.timeout(timeout):
            out += await reader.readline()
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"QUIT\r\n")
            await writer.drain()
            out += await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return out


@pytest.fixture(scope="session")
def clamd(tmp_path_factory):
    """One real clamd for the whole session (tests that break it use their own)."""
    from tests.clamav import ClamdProcess

    process = ClamdProcess(tmp_path_factory.mktemp("clamd")).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """RSA and Ed25519 keys for DKIM and ARC, made once per test session."""
    from tests import authdata

    return authdata.make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
async def dns(keys):
    """A real authoritative DNS server on loopback with the tests' zones."""
    from tests import authdata
    from tests.dnsserver import DnsServer

    server = await DnsServer(authdata.make_zone(keys)).start()
    yield server
    await server.stop()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """Debian's redis-server on a free loopback port (tests/redisserver.py)."""
    from tests import redisserver

    if not redisserver.available():
        pytest.skip("needs redis-server (Debian's redis-server package)")
    instance = redisserver.RedisInstance(free_port()).start()
    try:
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """Debian's PostgreSQL in a private data directory on a loopback port (tests/pgserver.py)."""
    from tests import pgserver

    if not pgserver.available():
        pytest.skip("needs Debian's postgresql server")
    instance = pgserver.PostgresInstance(free_port()).start()
    try:
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """A new database on the test server, migrated to the current schema."""
    from gateway.store.postgres import PostgresStore

    url = str(postgres_server.new_database())
    store = PostgresStore(url, check_schema=False)
    try:
        store.migrate()
    finally:
        store.close()
    return url


HOLD_RULE = """\
rules:
  - name: TEST_HOLD
    description: holds what says so
    owner: test
    mode: active
    when:
      subject: {contains: "hold me"}
    score: 11
"""


def hold_rules(directory: Path) -> Path:
    """A rules directory whose one rule quarantines mail with "hold me" in the subject."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hold.yaml").write_text(HOLD_RULE)
    return directory
