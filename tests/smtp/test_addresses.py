"""MAIL/RCPT address parsing: Mailmoat's _getaddr gives aiosmtpd's results, without its cost."""

from __future__ import annotations

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
    # The local-part limit is enforced as aiosmtpd does.
    long_local = "<" + "a" * 70 + "@example.test>"
    assert (ours._getaddr(long_local)[0] is None) == (limit == 64)


async def test_an_address_the_parser_chokes_on_is_refused_as_malformed(gateway):
    answer = await smtp_dialogue(
        gateway.port, [b"EHLO client.test\r\n", b"MAIL FROM:<alice@\r\n", b"QUIT\r\n"]
    )
    assert b"553 5.1.3 Malformed address" in answer
    assert b"IndexError" not in answer
