"""The pipeline: a check that raises or hangs becomes an ERROR finding, never a crash."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from gateway.config import CheckConfig, PolicyConfig
from gateway.context import Envelope, ScanContext
from gateway.pipeline import Pipeline
from gateway.policy.verdict import Policy
from gateway.types import Action, Finding, Status


@dataclass
class BrokenCheck:
    """A real check whose code raises: the kind of bug the pipeline must contain."""

    name: ClassVar[str] = "broken"
    symbols: ClassVar[dict[str, str]] = {}
    config: CheckConfig

    async def run(self, ctx):
        raise RuntimeError("disk on fire")

    async def aclose(self):
        return None


@dataclass
class SlowCheck:
    name: ClassVar[str] = "slow"
    symbols: ClassVar[dict[str, str]] = {"SLOW_DONE": "finished"}
    config: CheckConfig

    async def run(self, ctx):
        await asyncio.sleep(30)
        return [Finding(self.name, "SLOW_DONE", Status.PASS)]

    async def aclose(self):
        return None


@dataclass
class SubjectCheck:
    name: ClassVar[str] = "subject"
    symbols: ClassVar[dict[str, str]] = {"SUBJECT_SEEN": "saw the subject"}
    config: CheckConfig

    async def run(self, ctx):
        return [Finding(self.name, "SUBJECT_SEEN", Status.PASS, {"subject": ctx.message.subject})]

    async def aclose(self):
        return None


def make(*checks, on_error="tempfail"):
    policy = Policy(PolicyConfig(), {"SUBJECT_SEEN": 1.0}, {c.name: on_error for c in checks})
    return Pipeline(checks, policy)


def ctx(raw=b"Subject: hi\r\n\r\nbody\r\n"):
    return ScanContext(
        Envelope(id="0000000000000000.1", raw=raw, mail_from="a@b.c", rcpts=("d@e.f",))
    )


async def test_raising_check_becomes_error_finding_and_tempfail():
    result = await make(BrokenCheck(CheckConfig()), SubjectCheck(CheckConfig())).scan(ctx())
    verdict = result.verdict
    names = {s.name: s for s in verdict.symbols}
    assert names["BROKEN_ERROR"].status is Status.ERROR
    assert "disk on fire" in names["BROKEN_ERROR"].details["error"]
    assert names["SUBJECT_SEEN"].details == {"subject": "hi"}
    assert verdict.action is Action.TEMPFAIL
    assert set(result.timings_ms) == {"parse", "broken", "subject"}


async def test_slow_check_times_out():
    slow = SlowCheck(CheckConfig(timeout=0.2, on_error="accept"))
    result = await make(slow, on_error="accept").scan(ctx())
    [finding] = result.verdict.symbols
    assert finding.name == "SLOW_ERROR"
    assert finding.details == {"error": "timeout"}
    assert result.verdict.action is Action.ACCEPT
    assert result.timings_ms["slow"] < 5000


async def test_big_message_is_parsed_once_off_the_loop():
    raw = b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" * 20000 + b"y" * (2 << 20)
    result = await make(SubjectCheck(CheckConfig())).scan(ctx(raw))
    assert result.verdict.symbols[0].details == {"subject": "big"}


async def test_shared_clients_survive_a_reload(config_factory, tmp_path):
    """A reload swaps checks, rules and model; the DNS cache and the clamd client stay."""
    from gateway.config import load_settings
    from gateway.service import Gateway

    config = config_factory(
        None,
        checks__auth={"enabled": True},
        checks__antivirus={"enabled": True},
        antivirus={"address": f"unix:{tmp_path / 'clamd.sock'}"},
        dns={"nameservers": ["127.0.0.1:9"]},
    )
    gateway = Gateway(load_settings(config), config)

    def clients(g):
        checks = {c.name: c for c in g.pipeline.checks}
        return checks["auth"].dns, checks["auth"].known_policies, checks["antivirus"].client

    before = clients(gateway)
    old_pipeline = gateway.pipeline
    assert await gateway.reload()
    assert gateway.pipeline is not old_pipeline
    after = clients(gateway)
    assert all(a is b for a, b in zip(before, after, strict=True))
    await gateway.aclose()


@dataclass
class ServerCheck:
    """Waits on a server (a real socket pair: it asks, then reads the answer)."""

    name: ClassVar[str] = "server"
    symbols: ClassVar[dict[str, str]] = {}
    waits_on_network: ClassVar[bool] = True
    config: CheckConfig
    log: list[str]

    async def run(self, ctx):
        self.log.append("server: started")
        reader, writer = await asyncio.open_connection(*self.config_address)
        writer.write(b"ask\n")
        await reader.readline()
        self.log.append("server: answered")
        writer.close()
        return []

    async def aclose(self):
        return None


@dataclass
class CpuCheck:
    name: ClassVar[str] = "cpu"
    symbols: ClassVar[dict[str, str]] = {}
    config: CheckConfig
    log: list[str]

    async def run(self, ctx):
        self.log.append("cpu: ran")
        return []

    async def aclose(self):
        return None


async def test_checks_waiting_on_a_server_start_first_and_the_others_run_meanwhile():
    log: list[str] = []

    async def answer_late(reader, writer):
        await reader.readline()
        await asyncio.sleep(0.2)  # the server takes its time
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_late, "127.0.0.1", 0)
    try:
        waiting = ServerCheck(CheckConfig(), log)
        waiting.config_address = server.sockets[0].getsockname()[:2]
        cpu = CpuCheck(CheckConfig(), log)
        # Listed after the CPU check, the server check still starts before it runs.
        result = await make(cpu, waiting).scan(ctx())
    finally:
        server.close()
    assert log == ["server: started", "cpu: ran", "server: answered"]
    assert result.timings_ms["cpu"] < result.timings_ms["server"]
