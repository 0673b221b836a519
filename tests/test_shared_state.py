"""Rate limits and greylisting: in memory on one node, in Debian's real Redis across nodes.

Real parts: redis-server on a loopback port (tests/redisserver.py), gateways on loopback
relaying to a real sink, a real DNS server for the DKIM-signed sender.
"""

from __future__ import annotations

import asyncio
import logging

import aiosmtplib
import pytest
from redis.asyncio import Redis

from gateway.config import RedisConfig
from gateway.shared_state import LocalState, RedisState, SharedState
from tests import authdata
from tests.conftest import message, running_gateway


@pytest.fixture(params=["local", "redis"])
async def state(request, redis_server):
    """Each kind of state, the same tests."""
    if request.param == "local":
        yield LocalState()
        return
    shared = RedisState(RedisConfig(url=redis_server.url))
    yield shared
    await shared.aclose()


async def test_a_bucket_gives_its_burst_then_refuses(state):
    taken = [await state.take("sender:a@x.test", 1 / 3600, 3) for _ in range(5)]
    assert taken == [True, True, True, False, False]
    assert await state.take("sender:b@x.test", 1 / 3600, 3)  # another key, its own bucket
    # Refilled at the rate: 50 tokens a second.
    assert [await state.take("fast", 50.0, 1) for _ in range(2)] == [True, False]
    await asyncio.sleep(0.05)
    assert await state.take("fast", 50.0, 1)


async def test_a_triplet_waits_then_passes_and_stays_passed(state):
    assert await state.greylist("t1", 1.0, 3600, 86400) == 1  # first try: wait the delay
    assert await state.greylist("t1", 1.0, 3600, 86400) == 1  # too soon
    await asyncio.sleep(1.05)
    assert await state.greylist("t1", 1.0, 3600, 86400) == 0  # retried in time: passes
    assert await state.greylist("t1", 1.0, 3600, 86400) == 0  # and stays passed
    assert await state.greylist("t2", 1.0, 3600, 86400) == 1  # another triplet waits


async def test_two_nodes_count_in_one_bucket(redis_server):
    config = RedisConfig(url=redis_server.url)
    node_a, node_b = SharedState(config), SharedState(config)
    taken = []
    for node in (node_a, node_b, node_a, node_b, node_a):
        taken.append(await node.take("client_ip:192.0.2.1", 1 / 3600, 4))
    assert taken == [True, True, True, True, False]
    await node_a.aclose()
    await node_b.aclose()


async def test_redis_down_fails_open_visibly_and_recovers(redis_server, caplog):
    fallbacks: list[str] = []
    shared = SharedState(RedisConfig(url=redis_server.url, timeout=0.2, retry=0.3),
                         fallbacks.append)  # fmt: skip
    assert await shared.take("k", 1 / 3600, 1)  # in Redis
    redis_server.stop()
    caplog.set_level(logging.WARNING, "gateway.shared_state")
    # Redis gone: answered from this node's counts (its own bucket for k: one token),
    # never an error, and said in the log and the fallback counter.
    assert await shared.take("k", 1 / 3600, 1)
    assert not await shared.take("k", 1 / 3600, 1)
    assert fallbacks == ["ratelimit", "ratelimit"]
    assert "count per node" in caplog.text
    assert await shared.problem() is not None
    redis_server.start()
    await asyncio.sleep(0.35)  # the retry period
    # Redis again (a new, empty one: it keeps nothing on disk here): counted there.
    assert await shared.take("k", 1 / 3600, 1)
    assert fallbacks == ["ratelimit", "ratelimit"]
    client = Redis.from_url(redis_server.url)
    assert await client.exists("mailmoat:rl:k") == 1
    await client.aclose()
    assert "answers again" in caplog.text
    assert await shared.problem() is None
    await shared.aclose()


async def test_local_counts_are_bounded():
    state = LocalState(entries=100)
    for n in range(1000):
        await state.take(f"k{n}", 1.0, 1)
        await state.greylist(f"t{n}", 1.0, 60, 60)
    assert len(state.buckets) == 100
    assert len(state.triplets) == 100


async def mail_codes(port, sender, rcpts, data=None):
    """MAIL, each RCPT (and DATA when given): the reply codes and texts, no exception."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        try:
            reply = await client.mail(sender)
        except aiosmtplib.SMTPSenderRefused as refused:
            return [(refused.code, refused.message)]
        answers = [(reply.code, reply.message)]
        for rcpt in rcpts:
            try:
                reply = await client.rcpt(rcpt)
                answers.append((reply.code, reply.message))
            except aiosmtplib.SMTPRecipientRefused as refused:
                answers.append((refused.code, refused.message))
        if data is not None and any(code == 250 for code, _ in answers):
            try:
                reply = await client.data(data)
                answers.append((reply.code, reply.message))
            except aiosmtplib.SMTPDataError as refused:
                answers.append((refused.code, refused.message))
        return answers


async def test_rate_limits_defer_with_4_7_28_across_two_gateways(
    sink, config_factory, redis_server
):
    """Two gateways (two nodes) on one Redis: the sender's limit is counted across both."""
    limits = {"sender": {"per_minute": 0.01, "burst": 3},
              "recipient": {"per_minute": 0.01, "burst": 2}}  # fmt: skip
    config = config_factory(sink.port, redis={"url": redis_server.url}, ratelimit=limits)
    async with running_gateway(config) as node_a, running_gateway(config) as node_b:
        ports = [node_a.port, node_b.port, node_a.port]
        for port in ports:
            assert (await mail_codes(port, "bulk@sender.test", []))[0][0] == 250
        [(code, text)] = await mail_codes(node_b.port, "bulk@sender.test", [])
        assert code == 451
        assert text.startswith("4.7.28 Too much mail from this sender")
        # Recipients: two each, then 4.7.28 for that recipient only.
        answers = await mail_codes(node_a.port, "a@sender.test", ["bob@x.test", "bob@x.test"])
        answers += await mail_codes(node_b.port, "b@sender.test", ["bob@x.test", "carol@x.test"])
        # MAIL, RCPT, RCPT on A; MAIL, RCPT (bob's third: refused), RCPT (carol) on B.
        assert [code for code, _ in answers] == [250, 250, 250, 250, 451, 250]
        assert answers[4][1].startswith("4.7.28 Too much mail for this recipient")
        [deferred] = node_b.events(kind="mail_deferred")
        assert deferred.reason == "rate limit: sender bulk@sender.test"
        assert deferred.smtp_reply.startswith("451 4.7.28")
        assert node_b.gateway.metrics.ratelimited.labels("sender")._value.get() == 1


async def test_greylisting_defers_a_first_message_and_passes_the_retry(
    sink, config_factory, dns, keys
):
    config = config_factory(
        sink.port,
        greylist={"enabled": True, "delay": 1.0, "exempt_networks": []},
        dns={"nameservers": [dns.address], "timeout": 1.0},
        checks__auth={"enabled": True},
    )
    # A domain with no SPF, DKIM or DMARC in the test zone: nothing proves or refuses it.
    raw = message(subject="first contact", From="news@unlisted.test")
    async with running_gateway(config) as gw:
        first = await mail_codes(gw.port, "news@unlisted.test", ["bob@example.test"], raw)
        assert first[-1][0] == 451
        assert first[-1][1].startswith("4.7.1 Greylisted: please try again in 1 seconds")
        too_soon = await mail_codes(gw.port, "news@unlisted.test", ["bob@example.test"], raw)
        assert too_soon[-1][0] == 451
        await asyncio.sleep(1.1)
        retried = await mail_codes(gw.port, "news@unlisted.test", ["bob@example.test"], raw)
        assert retried[-1][0] == 250
        # The triplet passed: the next message from that sender to bob goes through at once;
        # to carol it is a new triplet.
        again = await mail_codes(gw.port, "news@unlisted.test", ["bob@example.test"], raw)
        assert again[-1][0] == 250
        carol = await mail_codes(gw.port, "news@unlisted.test", ["carol@example.test"], raw)
        assert carol[-1][0] == 451
        # A sender proven by an aligned DKIM signature is never delayed.
        signed = authdata.sign_rsa(authdata.message(subject="signed"), keys)
        proven = await mail_codes(gw.port, "alice@sender.test", ["bob@example.test"], signed)
        assert proven[-1][0] == 250
        greylisted = [e for e in gw.events(kind="message") if e.reason.startswith("greylisted")]
        assert len(greylisted) == 3
        assert {e.action for e in greylisted} == {"tempfail"}
        assert gw.gateway.metrics.greylisted._value.get() == 3
    delivered = await sink.wait_for(3)
    assert [m.rcpts for m in delivered] == [["bob@example.test"]] * 3


async def test_nothing_is_greylisted_or_limited_by_default(sink, config_factory):
    config = config_factory(sink.port)
    async with running_gateway(config) as gw:
        for _ in range(5):
            answers = await mail_codes(gw.port, "a@sender.test", ["bob@example.test"], message())
            assert answers[-1][0] == 250
        assert gw.gateway.shared.redis is None


async def test_redis_client_sees_the_shared_keys(redis_server):
    """The keys are under the configured prefix and expire (no unbounded growth in Redis)."""
    state = RedisState(RedisConfig(url=redis_server.url, prefix="site1:"))
    await state.take("client_ip:192.0.2.9", 1.0, 10)
    await state.greylist("abc", 300.0, 3600, 86400)
    client = Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys == ["site1:gl:abc", "site1:rl:client_ip:192.0.2.9"]
    assert 0 < await client.ttl("site1:rl:client_ip:192.0.2.9") <= 11
    assert 3000 < await client.ttl("site1:gl:abc") <= 3600
    await client.aclose()
    await state.aclose()
