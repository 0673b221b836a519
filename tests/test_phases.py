"""Checks at an SMTP step (connect, RCPT): both fronts refuse early, with an event.

The check here is the tests' own (a block list of client addresses and recipients), put in
the pipeline beside the registered ones, as a future reputation check would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import aiosmtplib
import pytest

from gateway.config import CheckConfig
from gateway.context import ScanContext
from gateway.events import EventFilter
from gateway.milter import protocol as p
from gateway.pipeline import Pipeline
from gateway.types import Action, Effect, Finding, Phase, SessionInfo, Status
from tests.conftest import message, running_gateway, smtp_dialogue
from tests.milter.test_protocol import Client, milter


@dataclass
class BlockListCheck:
    name: ClassVar[str] = "blocklist"
    symbols: ClassVar[dict[str, str]] = {"BLOCKED_CLIENT": "", "BLOCKED_RCPT": ""}
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.CONNECT, Phase.RCPT})
    clients: set[str] = field(default_factory=set)
    rcpts: set[str] = field(default_factory=set)
    config: CheckConfig = field(default_factory=CheckConfig)
    seen: list[tuple[Phase, SessionInfo]] = field(default_factory=list)

    async def run_early(self, phase: Phase, session: SessionInfo) -> Sequence[Finding]:
        self.seen.append((phase, session))
        if phase is Phase.CONNECT and session.client_ip in self.clients:
            effect = Effect(force=Action.REJECT, reply="Client on a block list")
            return [Finding(self.name, "BLOCKED_CLIENT", Status.FAIL, {}, effect)]
        if phase is Phase.RCPT and session.rcpt in self.rcpts:
            effect = Effect(force=Action.REJECT, reply="Recipient blocked")
            return [Finding(self.name, "BLOCKED_RCPT", Status.FAIL, {"rcpt": session.rcpt}, effect)]
        return []

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        return []

    async def aclose(self) -> None:
        return None


def with_check(gateway, check: BlockListCheck) -> None:
    old = gateway.pipeline
    gateway.pipeline = Pipeline([*old.checks, check], old.policy, old.rules)


async def test_the_proxy_refuses_a_recipient_at_rcpt(sink, config_factory):
    async with running_gateway(config_factory(sink.port)) as gw:
        check = BlockListCheck(rcpts={"blocked@example.test"})
        with_check(gw.gateway, check)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            await client.mail("a@sender.test")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused_rcpt:
                await client.rcpt("blocked@example.test")
            assert refused_rcpt.value.code == 550
            assert "5.7.1 Recipient blocked" in refused_rcpt.value.message
            await client.rcpt("bob@example.test")
            await client.data(message(subject="for bob only"))
        [received] = await sink.wait_for(1)
        assert received.rcpts == ["bob@example.test"]
        [refused] = gw.events(kind="rcpt_refused")
        assert refused.rcpts == ("blocked@example.test",)
        assert [s["name"] for s in refused.symbols] == ["BLOCKED_RCPT"]
        assert {phase for phase, _ in check.seen} == {Phase.CONNECT, Phase.RCPT}


async def test_the_proxy_refuses_a_client_at_connect(sink, config_factory):
    async with running_gateway(config_factory(sink.port)) as gw:
        with_check(gw.gateway, BlockListCheck(clients={"127.0.0.1"}))
        answer = await smtp_dialogue(gw.port, [])
        assert answer.startswith(b"554 5.7.1 Client on a block list")
        [refused] = gw.events(kind="connection_refused")
        assert refused.action == "reject"


async def test_the_milter_refuses_a_recipient_at_rcpt(config_factory):
    async with milter(config_factory) as (gateway, port):
        with_check(gateway, BlockListCheck(rcpts={"blocked@example.test"}))
        client = await Client.open(port)
        await client.negotiate()
        await client.send(p.SMFIC_CONNECT, b"client.test\x004\x00\x19192.0.2.7\x00")
        assert (await client.reply())[0] == p.SMFIR_CONTINUE
        await client.send(p.SMFIC_MAIL, b"<a@sender.test>\x00")
        assert (await client.reply())[0] == p.SMFIR_CONTINUE
        await client.send(p.SMFIC_RCPT, b"<blocked@example.test>\x00")
        code, data = await client.reply()
        assert code == p.SMFIR_REPLYCODE
        assert data.startswith(b"550 5.7.1 Recipient blocked")
        await client.close()
        [refused] = gateway.store.list(EventFilter(kind="rcpt_refused", limit=10))
        assert refused.client_ip == "192.0.2.7"
        assert refused.details["front"] == "milter"
