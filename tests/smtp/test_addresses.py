"""MAIL/RCPT address parsing: Mailmoat's _getaddr gives aiosmtpd's results, without its cost."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from gateway.smtp.server import MailmoatSMTP
from tests.conftest import smtp_dialogue

ARGS = [
    "", "<>", "<alice@example.test>", "alice@example.test", " <alice@example.test> SIZE=10",
    "<alice@example.test> BODY=8BITMIME SMTPUTF8", '<"odd local"@example.test>',
    "<@relay.test:alice@example.test>", "<alice@[192.0.2.1]>", "<alice>", "<alice@",
    "alice", "<<alice@example.test>>", "<" + "a" * 70 + "@example.test>", "<ü@exämple.test>",
    "<alice@example.test", "\x00<alice@example.test>", "<a@b@c>", "<@>", "<alice@.>",
    "<a.b+tag@sub.example.test>\t SIZE=1", "<a@b> (comment) SIZE=1", "<a..b@x.test>",
    "<.a@x.test>", "<a.@x.test>", "<a@x.test.>", "<a@x_y.test>", "<a@-x.test>",
    "<A!#$%&'*+/=?^_`{|}~-Z@Example.TEST>", "<a@b>x", "<a@b>(", "<a b@x.test>",
]  # fmt: skip


@pytest.mark.parametrize("limit", [0, 64])
def test_same_results_as_aiosmtpd(limit):
    ours = MailmoatSMTP.__new__(MailmoatSMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    choked = []
    for arg in ARGS:
        try:
            expected = theirs._getaddr(arg)
        except IndexError:  # the stdlib parser on "<alice@": a syntax error for us
            choked.append(arg)
            expected = (None, None)
        assert ours._getaddr(arg) == expected, arg
    assert "<alice@" in choked
    # And on random arguments made of what addresses and their parameters are made of.
    rng = random.Random(20261202)
    alphabet = 'ab.@<>()" \t=-_+![]:,;\\AZ09\x00é'
    for _ in range(5000):
        arg = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        for candidate in (arg, f"<{arg}>", f"<a{arg}@b.test> SIZE=1"):
            try:
                expected = theirs._getaddr(candidate)
            except (IndexError, AttributeError):  # the stdlib parser's crashes: malformed
                choked.append(candidate)
                expected = (None, None)
            assert ours._getaddr(candidate) == expected, candidate
    assert "<- +_@[0(>" in choked
    # The local-part limit is enforced as aiosmtpd does.
    long_local = "<" + "a" * 70 + "@example.test>"
    assert (ours._getaddr(long_local)[0] is None) == (limit == 64)


@pytest.mark.parametrize("address", [b"<alice@", b"<- +_@[0(>"])
async def test_an_address_the_parser_chokes_on_is_refused_as_malformed(gateway, address):
    answer = await smtp_dialogue(
        gateway.port, [b"EHLO client.test\r\n", b"MAIL FROM:" + address + b"\r\n", b"QUIT\r\n"]
    )
    assert b"553 5.1.3 Malformed address" in answer
    assert b"Error" not in answer  # was "500 Error: (IndexError)", "(AttributeError)"
