"""SMTP smuggling (bare LF / bare CR end-of-data variants) never yields a second message.

The backend here is a recorder that keeps the raw bytes the gateway sent it, so the test can
check that no ambiguous line ending reaches a backend that might honour it.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import running_gateway, smtp_dialogue

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n"
)
VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "lf-dot-cr": b"\n.\r",
}


class RecordingBackend:
    """A minimal SMTP server recording every byte the gateway sends after DATA."""

    def __init__(self) -> None:
        self.transcripts: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RecordingBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 recorder.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-recorder.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    self.transcripts.append(await reader.readuntil(b"\r\n.\r\n"))
                    writer.write(b"250 2.0.0 recorded\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def recorder():
    backend = await RecordingBackend().start()
    yield backend
    await backend.stop()


@pytest.mark.parametrize("ending", VARIANTS.values(), ids=VARIANTS.keys())
async def test_smuggled_end_of_data_is_not_a_second_message(recorder, config_factory, ending):
    async with running_gateway(config_factory(recorder.port)) as gw:
        body = b"Subject: hi\r\nFrom: a@sender.test\r\n\r\nhello" + ending + SMUGGLED
        answer = await smtp_dialogue(
            gw.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<a@sender.test>\r\n",
                b"RCPT TO:<bob@example.test>\r\n",
                b"DATA\r\n",
                body + b"\r\n.\r\n",
            ],
        )
        # Exactly one transaction is acknowledged; the smuggled commands are message text.
        assert answer.count(b"250 2.0.0 OK: queued as") == 1
        assert b"354" in answer
        events = gw.events(kind="message")
        assert len(events) == 1
        names = {s["name"] for s in events[0].symbols}
        assert names & {"PROTO_BARE_LF", "PROTO_BARE_CR"}
    [sent] = recorder.transcripts
    assert b"MAIL FROM:<evil@attacker.test>" in sent
    # What reached the backend has only CRLF line endings and no bare "." line before the end.
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", sent)
    assert b"\r\n.\r\n" not in sent[: -len(b"\r\n.\r\n")]


async def test_bare_newline_reject_mode_answers_550(recorder, config_factory):
    config = config_factory(recorder.port, server={"bare_newline": "reject"})
    async with running_gateway(config) as gw:
        answer = await smtp_dialogue(
            gw.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<a@sender.test>\r\n",
                b"RCPT TO:<bob@example.test>\r\n",
                b"DATA\r\n",
                b"Subject: hi\r\n\r\nhello\n.\n" + SMUGGLED + b"\r\n.\r\n",
            ],
        )
        assert b"550 5.5.2 Bare CR or LF" in answer
        [event] = gw.events(kind="message")
        assert event.action == "reject"
    assert recorder.transcripts == []


async def test_pipelined_commands_after_data_are_not_swallowed(recorder, config_factory):
    async with running_gateway(config_factory(recorder.port)) as gw:
        answer = await smtp_dialogue(
            gw.port,
            [
                b"EHLO client.test\r\n"
                b"MAIL FROM:<a@sender.test>\r\n"
                b"RCPT TO:<bob@example.test>\r\n"
                b"DATA\r\n",
                b"Subject: one\r\n\r\nbody\r\n.\r\n"
                b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
                b"Subject: two\r\n\r\nbody\r\n.\r\n",
            ],
        )
        assert answer.count(b"250 2.0.0 OK: queued as") == 2
    assert len(recorder.transcripts) == 2


async def test_null_sender_is_relayed_as_null(recorder, config_factory):
    async with running_gateway(config_factory(recorder.port)) as gw:
        answer = await smtp_dialogue(
            gw.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<>\r\n",
                b"RCPT TO:<bob@example.test>\r\n",
                b"DATA\r\n",
                b"Subject: bounce\r\n\r\nDelivery failed\r\n.\r\n",
            ],
        )
        assert b"250 2.0.0 OK: queued as" in answer
        [event] = gw.events(kind="message")
        assert event.mail_from == ""
        assert "PROTO_EMPTY_SENDER" in {s["name"] for s in event.symbols}


async def test_nul_and_command_injection_in_addresses_are_refused(recorder, config_factory):
    async with running_gateway(config_factory(recorder.port)) as gw:
        answer = await smtp_dialogue(
            gw.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<a@sender.test> X-EVIL=1\r\n",
                b"MAIL FROM:<a@sender.test>\r\n",
                b"RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n",
                b"RCPT TO:<b\x00ob@example.test>\r\n",
            ],
        )
        assert b"555 5.5.4" in answer  # unknown MAIL parameter
        assert b"250 2.1.0" in answer
        assert b"553 5.1.3 Malformed address" in answer  # NUL in the address
        assert answer.count(b"250 2.1.5") == 0
    assert recorder.transcripts == []
