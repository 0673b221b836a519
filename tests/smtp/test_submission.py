"""Authenticated submission: AUTH PLAIN over TLS may relay anywhere; nobody else may."""

from __future__ import annotations

import aiosmtplib
import pytest

from gateway.web.security import hash_password
from tests.conftest import message, running_gateway, smtp_dialogue
from tests.smtp.test_lifecycle import tls_pair  # noqa: F401 - the fixture

PASSWORD = "a long submission password"


@pytest.fixture
def submission_config(config_factory, tls_pair, tmp_path):  # noqa: F811
    cert, key = tls_pair
    users = tmp_path / "submission-users"
    users.write_text(f"# name:argon2 hash\nalice:{hash_password(PASSWORD)}\n")
    return config_factory(
        None,
        server={"tls_cert": str(cert), "tls_key": str(key), "submission_users": str(users)},
    )


def client(port: int) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=True,
                           validate_certs=False)  # fmt: skip


async def test_an_authenticated_user_relays_to_any_domain(submission_config, tmp_path):
    async with running_gateway(submission_config) as gw:
        async with client(gw.port) as smtp:
            await smtp.ehlo()  # after STARTTLS, where AUTH is offered
            assert smtp.supports_extension("auth")
            assert "PLAIN" in smtp.esmtp_extensions["auth"]
            assert "LOGIN" not in smtp.esmtp_extensions["auth"]
            await smtp.login("alice", PASSWORD)
            await smtp.sendmail("alice@example.test", ["friend@elsewhere.example"],
                                message(subject="outbound"))  # fmt: skip
        [event] = gw.events(kind="message")
        assert event.details["auth_user"] == "alice"
        assert event.rcpts == ("friend@elsewhere.example",)
    delivered = list((tmp_path / "maildir").glob("friend@elsewhere.example/new/*"))
    assert len(delivered) == 1


async def test_without_auth_only_our_domains(submission_config):
    async with running_gateway(submission_config) as gw, client(gw.port) as smtp:
        await smtp.mail("mallory@evil.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("victim@gmail.example")
        assert refused.value.code == 550
        assert "Relaying denied" in refused.value.message


async def test_wrong_passwords_are_refused_then_limited(submission_config):
    async with running_gateway(submission_config) as gw:
        codes = []
        for _ in range(6):
            async with client(gw.port) as smtp:
                try:
                    await smtp.login("alice", "not the password")
                except aiosmtplib.SMTPAuthenticationError as exc:
                    codes.append(exc.code)
        assert codes[:5] == [535] * 5
        assert codes[5] == 454  # five failures for the name: the sixth is not even tried


async def test_no_auth_without_tls(submission_config):
    async with running_gateway(submission_config) as gw:
        answer = await smtp_dialogue(
            gw.port, [b"EHLO client.test\r\n", b"AUTH PLAIN AGFsaWNlAHg=\r\n"]
        )
        assert b"250-AUTH" not in answer  # not even offered in the clear
        assert b"538 5.7.11" in answer
