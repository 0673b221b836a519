"""Bulk detection: near-duplicates of one campaign counted together, distinct mail apart.

Real parts: SpamAssassin corpus messages, Debian's redis-server for the shared count,
a gateway on loopback relaying to a real sink for the symbol in events.
"""

from __future__ import annotations

import random
import textwrap

import aiosmtplib

from bench.bulk import body, variant
from bench.common import load_corpus
from gateway.checks.bulk import BulkCheck, shingles
from gateway.config import Settings
from gateway.context import Envelope, ScanContext
from tests.conftest import message, running_gateway


def campaign_texts(count: int) -> list[str]:
    spam = [raw for name, raw in load_corpus() if name.startswith("spam")][:100]
    return [t for t in (body(r) for r in spam) if len(shingles(t)) >= 40][:count]


def as_body(text: str) -> str:
    """Text as a message body: lines of at most 76 characters, CRLF."""
    return "".join(line + "\r\n" for line in textwrap.wrap(text, 76))


def ctx_of(text: str) -> ScanContext:
    raw = message(body=as_body(text))
    return ScanContext(Envelope(id="t.1", raw=raw, mail_from="a@sender.test",
                                rcpts=("bob@example.test",)))  # fmt: skip


async def test_a_varied_campaign_is_counted_as_one_after_min_copies():
    check = BulkCheck.from_config({"min_copies": 10}, Settings())
    rng = random.Random(1)
    for base in campaign_texts(3):
        flagged = [bool(await check.run(ctx_of(variant(base, rng)))) for _ in range(30)]
        assert not any(flagged[:9])  # fewer than 10 copies: not a campaign yet
        assert sum(flagged[10:]) >= 18  # most later variants are recognised (of 20)


async def test_distinct_messages_are_not_a_campaign():
    check = BulkCheck.from_config({"min_copies": 3}, Settings())
    ham = [raw for name, raw in load_corpus() if "ham" in name][:300]
    flagged = [bool(await check.run(ctx_of(body(raw)))) for raw in ham]
    assert sum(flagged) <= 6  # list mail with long shared footers, at most 2%


async def test_short_texts_are_not_counted():
    check = BulkCheck.from_config({"min_copies": 2}, Settings())
    for _ in range(5):
        assert await check.run(ctx_of("Hi there, see you soon.")) == []


async def test_two_nodes_count_one_campaign_in_redis(redis_server):
    settings = Settings(redis={"url": redis_server.url})
    node_a = BulkCheck.from_config({"min_copies": 6}, settings)
    node_b = BulkCheck.from_config({"min_copies": 6}, settings)
    rng = random.Random(2)
    [base] = campaign_texts(1)
    for n in range(5):
        assert await (node_a if n % 2 else node_b).run(ctx_of(variant(base, rng))) == []
    [hit] = await node_a.run(ctx_of(base))
    assert hit.detail["copies"] >= 6
    await node_a.state.aclose()
    await node_b.state.aclose()


async def test_the_gateway_records_the_campaign(sink, config_factory):
    config = config_factory(sink.port, checks__bulk={"min_copies": 3})
    [base] = campaign_texts(1)
    rng = random.Random(3)
    async with (
        running_gateway(config) as gw,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=20) as client,
    ):
        for _ in range(4):
            mail = message(body=as_body(variant(base, rng)))
            await client.sendmail("a@sender.test", ["bob@example.test"], mail)
        symbols = [{s["name"] for s in e.symbols} for e in gw.events(kind="message")]
    assert sum("BULK_CAMPAIGN" in names for names in symbols) >= 1


def ctx_from(text: str, sender: str) -> ScanContext:
    raw = message(body=as_body(text))
    return ScanContext(Envelope(id="t.1", raw=raw, mail_from=sender,
                                rcpts=("bob@example.test",)))  # fmt: skip


async def campaign_from_senders(check: BulkCheck, base: str, senders: list[str]) -> list[set]:
    rng = random.Random(4)
    return [{f.symbol for f in await check.run(ctx_from(variant(base, rng), s))}
            for s in senders]  # fmt: skip


async def test_a_campaign_from_many_senders_is_told_from_a_newsletter(redis_server):
    [base] = campaign_texts(1)
    for settings in (Settings(), Settings(redis={"url": redis_server.url})):
        check = BulkCheck.from_config({"min_copies": 50, "min_senders": 5}, settings)
        botnet = await campaign_from_senders(check, base, [f"u{n}@bot{n}.test" for n in range(8)])
        assert "BULK_MANY_SENDERS" not in set().union(*botnet[:3])
        assert sum("BULK_MANY_SENDERS" in found for found in botnet[5:]) >= 2
        await check.state.aclose()
    [other] = campaign_texts(2)[1:]
    check = BulkCheck.from_config({"min_copies": 5, "min_senders": 5}, Settings())
    newsletter = await campaign_from_senders(check, other, ["news@list.test"] * 10)
    assert "BULK_CAMPAIGN" in newsletter[-1]  # many copies ...
    assert not any("BULK_MANY_SENDERS" in found for found in newsletter)  # ... one sender
