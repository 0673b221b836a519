"""Clients that try to hold the gateway's resources: slowloris, keep-alives, recipient
floods and probing. Each is cut off by a limit, and honest clients are served meanwhile."""

from __future__ import annotations

import asyncio
import time

import aiosmtplib
import pytest

from tests.conftest import message, running_gateway, send_message


async def trickle(port: int) -> bytes:
    """Slowloris: one byte of a command every 50 ms, never a line end; what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"220")
        answer = asyncio.create_task(reader.read())
        for byte in b"EHLO " + b"x" * 1000:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(answer, 5)
    finally:
        writer.close()


async def test_slowloris_is_cut_off_and_honest_clients_get_through(sink, config_factory):
    config = config_factory(sink.port, server={"max_connections_per_ip": 4, "command_timeout": 0.5})
    async with running_gateway(config) as gw:
        started = time.monotonic()
        tricklers = [asyncio.create_task(trickle(gw.port)) for _ in range(4)]
        await asyncio.sleep(0.2)
        # The slots from this address are taken: a fifth connection is refused at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421 4.7.0")
        writer.close()
        # Bytes keep arriving, but no command completes: the command timer is not reset.
        answers = await asyncio.wait_for(asyncio.gather(*tricklers), 10)
        assert all(a.startswith(b"421 4.4.2") for a in answers), answers
        assert time.monotonic() - started < 3
        assert (await send_message(gw.port, message(subject="honest"))).code == 250
    assert len(sink.messages) == 1


async def test_keep_alive_commands_are_bounded(sink, config_factory):
    config = config_factory(sink.port, server={"max_junk_commands": 5})
    async with running_gateway(config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        await reader.readline()
        writer.write(b"NOOP\r\n" * 8)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    lines = answer.decode().splitlines()
    assert lines[:5] == ["250 2.0.0 OK"] * 5
    assert lines[5].startswith("421 4.7.0")
    assert len(lines) == 6  # closed after the 421


async def test_thousands_of_recipients_pipelined(sink, config_factory):
    async with running_gateway(config_factory(sink.port)) as gw:  # max_recipients = 100
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        await reader.readline()
        rcpts = b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(5000))
        writer.write(b"EHLO flood\r\nMAIL FROM:<a@sender.test>\r\n" + rcpts)
        await writer.drain()
        answers: list[bytes] = []
        async with asyncio.timeout(60):
            while len(answers) < 5002:
                line = await reader.readline()
                if not line.startswith(b"250-"):
                    answers.append(line)
        writer.write(b"DATA\r\n")
        assert (await reader.readline()).startswith(b"354")
        writer.write(message() + b".\r\nQUIT\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert rest.startswith(b"250 2.0.0 OK: queued")
        rcpt_answers = answers[2:]
        assert all(a.startswith(b"250 2.1.5") for a in rcpt_answers[:100])
        assert all(a.startswith(b"452 4.5.3") for a in rcpt_answers[100:])
        [received] = await sink.wait_for(1)
        assert len(received.rcpts) == 100
        # One event for the overflow, not 4,900: the flood does not flood the store.
        assert len(gw.events(kind="rcpt_refused")) == 1


async def test_probing_is_cut_off_after_max_errors(sink, config_factory):
    config = config_factory(sink.port, server={"accept_domains": ["example.test"], "max_errors": 5})
    async with running_gateway(config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        await reader.readline()
        probes = b"".join(b"RCPT TO:<victim%d@elsewhere.test>\r\n" % i for i in range(50))
        writer.write(b"HELO probe\r\nMAIL FROM:<a@sender.test>\r\n" + probes)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        lines = answer.decode().splitlines()
        assert lines[:2] == ["250 2.0.0 mx.test", "250 2.1.0 Sender OK"]
        assert [line[:9] for line in lines[2:]] == ["550 5.7.1"] * 5 + ["421 4.7.0"]
        assert len(gw.events(kind="rcpt_refused")) == 5
        # The next session starts with a clean slate.
        assert (await send_message(gw.port, message(subject="after"))).code == 250


async def test_errors_between_delivered_messages_do_not_add_up(sink, config_factory):
    # A long session of a real mailer with a refusal now and then is not probing.
    config = config_factory(sink.port, server={"accept_domains": ["example.test"], "max_errors": 3})
    async with running_gateway(config) as gw:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            for n in range(5):
                await client.mail("a@sender.test")
                for outsider in ("x@elsewhere.test", "y@elsewhere.test"):
                    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                        await client.rcpt(outsider)
                    assert refused.value.code == 550
                await client.rcpt("bob@example.test")
                assert (await client.data(message(subject=f"m{n}"))).code == 250
        assert len(sink.messages) == 5
