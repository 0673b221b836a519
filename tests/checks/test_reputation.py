"""DNS block lists against a real DNS server on loopback serving test zones.

Real parts: tests/dnsserver.py answering A queries for the test lists (listed names, the
refusal codes lists use, a name that never answers), the project's DNS client.
"""

from __future__ import annotations

import pytest

from gateway.checks.reputation import ReputationCheck
from gateway.config import Settings
from gateway.context import Envelope, ScanContext
from gateway.errors import NotConfigured
from tests.conftest import message
from tests.dnsserver import DnsServer, Zone


@pytest.fixture
async def lists():
    zone = Zone()
    zone.add("10.2.0.192.zen.test", "A", "127.0.0.2")  # 192.0.2.10 listed
    zone.add("11.2.0.192.zen.test", "A", "127.255.255.254")  # "public resolver": refused
    zone.add("12.2.0.192.zen.test", "A", "10.0.0.1")  # a resolver's rewrite: not 127/8
    v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    zone.add(f"{v6}.zen.test", "A", "127.0.0.4")  # 2001:db8::1 listed
    zone.add("spam-sender.test.dbl.test", "A", "127.0.1.2")
    zone.add("evil-link.test.dbl.test", "A", "127.0.1.2")
    zone.add("refused-link.test.dbl.test", "A", "127.0.1.255")  # "IP queries refused"
    zone.add("blocked.test.dbl.test", "A", "127.0.0.1")  # "access blocked": not listed
    zone.drop.add("slow-link.test.dbl.test.")
    server = await DnsServer(zone).start()
    yield server
    await server.stop()


def check_for(server, **section) -> ReputationCheck:
    settings = Settings(dns={"nameservers": [server.address], "timeout": 1.0})
    config = {
        "ip_zones": [{"zone": "zen.test", "codes": {"127.0.0.2": "SBL", "127.0.0.4": "XBL"}}],
        "domain_zones": [{"zone": "dbl.test", "score": 5.0}],
        "lookup_private": True,
        **section,
    }
    return ReputationCheck.from_config(config, settings)


def context(client_ip: str, mail_from: str = "a@sender.test", body: str = "Hello.\r\n"):
    raw = message(body=body)
    return ScanContext(Envelope(id="t.1", raw=raw, mail_from=mail_from,
                                rcpts=("bob@example.test",), client_ip=client_ip))  # fmt: skip


async def test_a_listed_client_address_ipv4_and_ipv6(lists):
    check = check_for(lists)
    [hit] = await check.run(context("192.0.2.10"))
    assert (hit.symbol, dict(hit.detail)) == (
        "RBL_LISTED",
        {"zone": "zen.test", "listed": "192.0.2.10", "code": "127.0.0.2", "meaning": "SBL"},
    )
    [hit] = await check.run(context("2001:db8::1"))
    assert hit.detail["meaning"] == "XBL"
    assert await check.run(context("192.0.2.99")) == []  # NXDOMAIN: not listed


async def test_refusals_and_rewrites_never_count(lists):
    check = check_for(lists, ip_zones=[{"zone": "zen.test"}])  # any 127/8 answer counts
    assert await check.run(context("192.0.2.11")) == []  # 127.255.255.254: refused
    assert await check.run(context("192.0.2.12")) == []  # 10.0.0.1: not a list's answer
    body = "http://refused-link.test/ and http://www.blocked.test/x\r\n"
    assert await check.run(context("192.0.2.99", body=body)) == []


async def test_sender_and_link_domains(lists):
    check = check_for(lists)
    body = "See http://www.evil-link.test/win and http://fine.test/ now.\r\n"
    found = await check.run(context("192.0.2.99", "x@mail.spam-sender.test", body))
    assert sorted((f.symbol, f.detail["listed"]) for f in found) == [
        ("SENDER_DOMAIN_LISTED", "spam-sender.test"),
        ("URIBL_LISTED", "evil-link.test"),
    ]
    assert {f.effect.score for f in found} == {5.0}  # the zone's own score


async def test_a_list_that_does_not_answer_is_skipped_not_a_failure(lists):
    check = check_for(lists)
    body = "http://slow-link.test/ and http://evil-link.test/\r\n"
    found = await check.run(context("192.0.2.99", body=body))
    assert [f.detail["listed"] for f in found] == ["evil-link.test"]


async def test_queries_are_bounded_and_private_addresses_stay_home(lists):
    check = check_for(lists, max_queries=3, lookup_private=False)
    links = "".join(f"http://site{n}.test/ " for n in range(50)) + "\r\n"
    ctx = context("10.1.2.3", body=links)
    asked = check.queries(ctx)
    assert len(asked) == 3
    assert all(q.symbol != "RBL_LISTED" for q in asked)  # 10.1.2.3 is not looked up
    assert [q.listed for q in asked[:1]] == ["sender.test"]  # the sender first


def test_no_lists_configured_means_the_check_is_off():
    with pytest.raises(NotConfigured, match="no ip_zones or domain_zones"):
        ReputationCheck.from_config({}, Settings())


async def test_a_link_that_does_not_parse_is_skipped_not_a_crash(lists):
    """urlsplit raises on href="http://[oops/" (a bad IPv6 literal): the check read hosts
    with it, so one such link made the whole check fail."""
    check = check_for(lists)
    raw = (
        b"From: a@sender.test\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n"
        b"<a href='http://[oops/'>x</a> <a href='http://evil-link.test/'>y</a>\r\n"
    )
    ctx = ScanContext(Envelope(id="t.1", raw=raw, mail_from="a@sender.test",
                               rcpts=("bob@example.test",), client_ip="192.0.2.99"))  # fmt: skip
    found = await check.run(ctx)
    assert [f.detail["listed"] for f in found] == ["evil-link.test"]
