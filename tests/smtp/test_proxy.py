"""End to end over loopback: a real client, the gateway, a real SMTP sink as backend."""

from __future__ import annotations

import aiosmtplib
import pytest

from gateway.ml.features import FEATURE_VERSION
from tests.conftest import message, running_gateway, smtp_dialogue


async def send(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[dict, str]:
    """Send with aiosmtplib; return (refused recipients, final reply)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        refused, reply = await client.sendmail(sender, rcpts, data)
    return refused, reply


async def send_refused(
    port: int,
    error: type[aiosmtplib.SMTPResponseException],
    code: int,
    text: str,
    sender: str = "alice@sender.test",
) -> None:
    """Send one message that must be refused with ``error``, ``code`` and ``text`` in it."""
    with pytest.raises(error) as refused:
        await send(port, sender, ["bob@example.test"], message())
    assert refused.value.code == code
    assert text in refused.value.message


async def test_delivery_adds_headers_and_removes_forged_ones(gateway, sink):
    data = message(X_Mailmoat_Score="-100", X_Spam_Flag="NO")
    _, reply = await send(gateway.port, "alice@sender.test", ["bob@example.test"], data)
    assert "queued as" in reply
    [received] = await sink.wait_for(1)
    assert received.mail_from == "alice@sender.test"
    assert received.rcpts == ["bob@example.test"]
    assert b"X-Mailmoat-Score: 0\r\n" in received.data
    assert b"X-Mailmoat-Action: accept\r\n" in received.data
    assert b"X-Mailmoat-Symbols:" in received.data
    assert b"-100" not in received.data
    assert b"X-Spam-Flag" not in received.data
    assert received.data.endswith(b"Hi there.\r\n")

    [event] = gateway.events(kind="message")
    assert event.action == "accept"
    # Every message a check read the features of keeps them (the raw only when sampled).
    assert gateway.gateway.store.retained(event.id).features["text"].startswith("Hello")
    assert event.mail_from == "alice@sender.test"
    assert event.rcpts == ("bob@example.test",)
    assert event.subject == "Hello"
    assert event.message_id == "<m1@sender.test>"
    assert event.smtp_reply.startswith("250 2.0.0")
    assert event.backend_reply.startswith("250")
    assert set(event.timings_ms) >= {"parse", "protocol", "headers"}
    assert event.versions["mailmoat"]


async def test_tagged_message_gets_spam_flag(sink, config_factory):
    config = config_factory(sink.port, policy={"tag": 1.0, "quarantine": 50, "reject": 60})
    async with running_gateway(config) as gw:
        await send(gw.port, "a@sender.test", ["bob@example.test"], message(Date=None))
    [received] = await sink.wait_for(1)
    assert b"X-Spam-Flag: YES\r\n" in received.data
    assert b"X-Mailmoat-Action: tag\r\n" in received.data
    assert b"HDR_MISSING_DATE(1)" in received.data


async def test_backend_refusing_one_recipient_is_seen_at_rcpt_time(gateway, sink):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.port, timeout=10) as client:
        await client.mail("alice@sender.test")
        ok = await client.rcpt("bob@example.test")
        assert ok.code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("unknown@example.test")
        assert refused.value.code == 550
        assert "5.1.1" in refused.value.message
        assert "User unknown" in refused.value.message
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as busy:
            await client.rcpt("busy@example.test")
        assert busy.value.code == 450
        reply = await client.data(message())
        assert reply.code == 250
    [received] = await sink.wait_for(1)
    assert received.rcpts == ["bob@example.test"]
    refused_events = gateway.events(kind="rcpt_refused")
    assert {e.rcpts for e in refused_events} == {("unknown@example.test",), ("busy@example.test",)}
    assert all(e.backend_reply for e in refused_events)


async def test_backend_down_at_connect_gives_451(config_factory):
    from tests.conftest import free_port

    closed = free_port()  # nothing listens there
    async with running_gateway(config_factory(closed)) as gw:
        await send_refused(gw.port, aiosmtplib.SMTPSenderRefused, 451, "4.4.1")
        [event] = gw.events(kind="mail_deferred")
        assert event.smtp_reply.startswith("451 4.4.1")


async def test_backend_lost_before_data_gives_451_and_nothing_is_acknowledged(gateway, sink):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.port, timeout=10) as client:
        await client.mail("alice@sender.test")
        await client.rcpt("bob@example.test")
        await sink.stop()  # the backend dies between RCPT and DATA
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await client.data(message())
        assert failed.value.code == 451
        assert "4.4.2" in failed.value.message
    assert sink.messages == []
    [event] = gateway.events(kind="message")
    assert event.smtp_reply.startswith("451")


async def test_backend_data_4xx_is_mirrored(gateway, sink):
    sink.handler.data_reply = "452 4.3.1 Insufficient system storage"
    await send_refused(
        gateway.port, aiosmtplib.SMTPDataError, 452, "4.3.1 Insufficient system storage"
    )


async def test_backend_stalling_past_its_timeout_gives_451(sink, config_factory):
    sink.handler.data_delay = 3.0
    config = config_factory(sink.port, backend={"data_timeout": 0.5})
    async with running_gateway(config) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await send(gw.port, "alice@sender.test", ["bob@example.test"], message())
        assert failed.value.code == 451


async def test_backend_session_is_reused_across_transactions(gateway, sink):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.port, timeout=10) as client:
        for n in range(3):
            await client.sendmail("a@sender.test", ["bob@example.test"], message(subject=f"n{n}"))
    await sink.wait_for(3)
    assert len(sink.protocols) == 1
    ids = [e.id for e in gateway.events(kind="message")]
    conn = {i.split(".")[0] for i in ids}
    assert len(conn) == 1
    assert sorted(i.split(".")[1] for i in ids) == ["1", "2", "3"]


async def test_reject_gives_5xx_and_tempfail_gives_4xx(sink, config_factory):
    force = {"HDR_MISSING_FROM": "reject", "HDR_MISSING_DATE": "tempfail"}
    config = config_factory(sink.port, policy={"force": force})
    async with running_gateway(config) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as rejected:
            await send(gw.port, "a@sender.test", ["bob@example.test"], message(From=None))
        assert rejected.value.code == 554
        assert "5.7.1" in rejected.value.message
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await send(gw.port, "a@sender.test", ["bob@example.test"], message(Date=None))
        assert deferred.value.code == 451
        assert "4.7.1" in deferred.value.message
        actions = sorted(e.action for e in gw.events(kind="message"))
        assert actions == ["reject", "tempfail"]
    assert sink.messages == []


async def test_quarantined_message_is_released_and_arrives(sink, config_factory):
    config = config_factory(sink.port, policy={"force": {"HDR_MISSING_MESSAGE_ID": "quarantine"}})
    async with running_gateway(config) as gw:
        _, reply = await send(
            gw.port, "a@sender.test", ["bob@example.test"], message(Message_ID=None)
        )
        assert reply.startswith("2.0.0 OK: queued as") or "queued as" in reply
        assert sink.messages == []
        [entry] = gw.gateway.quarantine.list()
        assert entry.rcpts == ("bob@example.test",)
        stored = gw.gateway.quarantine.read(entry.id)
        assert b"X-Mailmoat-Action: quarantine" in stored
        reply = await gw.gateway.release(entry.id, actor="ana")
        assert reply.ok
        [received] = await sink.wait_for(1)
        assert received.rcpts == ["bob@example.test"]
        # What arrives says it was released, not that it is in quarantine.
        assert b"X-Mailmoat-Action: quarantine" not in received.data
        assert b"X-Mailmoat-Action: release (by ana)" in received.data
        assert received.data.count(b"X-Mailmoat-Action:") == 1
        assert gw.gateway.quarantine.get(entry.id).status == "released"
        # Quarantined mail is always retained for retraining; a release labels it ham.
        retained = gw.gateway.store.retained(entry.id)
        assert retained.raw is not None
        assert retained.features["version"] == FEATURE_VERSION
        label = gw.gateway.store.current_label(entry.id)
        assert (label.label, label.source) == ("ham", "release")
        assert [e.action for e in gw.events(kind="quarantine_release")] == ["release"]


async def test_with_no_check_reading_features_only_kept_messages_get_a_snapshot(
    sink, config_factory, tmp_path
):
    """Pass-through (no classifier, heuristics or bulk check): features are not extracted
    for every message only to be stored; the messages kept raw (sampled, quarantined) still
    get them."""
    for rate, kept in ((0.0, False), (1.0, True)):
        config = config_factory(
            sink.port,
            checks__heuristics={"enabled": False},
            checks__bulk={"enabled": False},
            store={"retain_sample_rate": rate, "path": str(tmp_path / f"store-{rate}")},
        )
        async with running_gateway(config) as gw:
            await send(gw.port, "alice@sender.test", ["bob@example.test"], message())
            [event] = gw.events(kind="message")
            retained = gw.gateway.store.retained(event.id)
            assert (retained.raw is not None) is kept
            assert (retained.features is not None) is kept, rate
            if kept:
                assert retained.features["version"] == FEATURE_VERSION


async def test_release_to_a_down_backend_keeps_the_message_held(sink, config_factory):
    config = config_factory(sink.port, policy={"force": {"HDR_MISSING_MESSAGE_ID": "quarantine"}})
    async with running_gateway(config) as gw:
        await send(gw.port, "a@sender.test", ["bob@example.test"], message(Message_ID=None))
        [entry] = gw.gateway.quarantine.list()
        await sink.stop()
        from gateway.errors import RelayError

        with pytest.raises(RelayError):
            await gw.gateway.release(entry.id)
        assert gw.gateway.quarantine.get(entry.id).status == "held"
        assert gw.gateway.quarantine.read(entry.id)


async def test_a_release_the_backend_refuses_for_a_recipient_stays_held(sink, config_factory):
    config = config_factory(sink.port, policy={"force": {"HDR_MISSING_MESSAGE_ID": "quarantine"}})
    async with running_gateway(config) as gw:
        # Held for two recipients, one of whom the backend no longer knows by the release.
        rcpts = ("bob@example.test", "unknown-carol@example.test")
        gw.gateway.quarantine.hold("6b0f000000000001.1", "a@sender.test", rcpts, "held",
                                   12.0, "score 12", message(subject="held"))  # fmt: skip
        [entry] = gw.gateway.quarantine.list()
        reply = await gw.gateway.release(entry.id)
        assert not reply.ok
        assert "unknown-carol@example.test" in reply.text
        assert sink.messages == []  # not to bob either: all or nothing
        assert gw.gateway.quarantine.get(entry.id).status == "held"
        [event] = gw.events(kind="quarantine_release")
        assert event.action == "release_failed"
        assert list(event.details["refused"]) == ["unknown-carol@example.test"]


async def test_oversized_data_gets_552(sink, config_factory):
    config = config_factory(sink.port, server={"max_message_size": 10_000})
    async with running_gateway(config) as gw:
        big = message(body="x" * 70 + "\r\n") + b"y" * 70 * 200 + b"\r\n"
        big = big.replace(b"y" * 70, b"y" * 69 + b"\r\n")
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            await client.mail("a@sender.test")
            await client.rcpt("bob@example.test")
            with pytest.raises(aiosmtplib.SMTPResponseException) as failed:
                await client.data(big)
        assert failed.value.code == 552
        assert "5.3.4" in failed.value.message
        # A declared SIZE over the limit is refused at MAIL already.
        answer = await smtp_dialogue(
            gw.port, [b"EHLO c.test\r\n", b"MAIL FROM:<a@sender.test> SIZE=20000\r\n"]
        )
        assert b"250-SIZE 10000" in answer
        assert b"552 5.3.4" in answer
        # One event for the oversized DATA, one for the oversized SIZE= at MAIL.
        refusals = gw.events(kind="data_refused")
        assert [e.smtp_reply[:9] for e in refusals] == ["552 5.3.4", "552 5.3.4"]
    assert sink.messages == []


async def test_ehlo_advertises_extensions(gateway):
    answer = await smtp_dialogue(gateway.port, [b"EHLO client.test\r\n"])
    for ext in (b"SIZE", b"8BITMIME", b"SMTPUTF8", b"PIPELINING"):
        assert b"250-" + ext in answer or b"250 " + ext in answer
    assert b"STARTTLS" not in answer  # no certificate configured
    assert answer.startswith(b"220 mx.test Mailmoat ESMTP")


async def test_malformed_message_gets_a_verdict_not_a_crash(gateway, sink):
    garbage = (
        b"this is not a header\r\n"
        b"Content-Type: multipart/mixed; boundary=\r\n"
        b"\xff\xfe\x00\x01 binary\r\n\r\n--\r\n--x--\r\n"
        + bytes(range(1, 256)).replace(b"\n", b"")
        + b"\r\n"
    )
    _, reply = await send(gateway.port, "a@sender.test", ["bob@example.test"], garbage)
    assert "queued as" in reply
    [event] = gateway.events(kind="message")
    names = {s["name"] for s in event.symbols}
    assert {"HDR_MALFORMED_LINE", "HDR_MISSING_FROM", "PROTO_NUL"} <= names
    # The answer is 250 because it was stored or delivered, as its verdict says.
    assert event.action in ("tag", "quarantine")
    if event.action == "quarantine":
        assert [q.id for q in gateway.gateway.quarantine.list()] == [event.id]
        assert sink.messages == []
    else:
        [delivered] = sink.messages
        assert b"X-Mailmoat-Action: tag" in delivered.data


async def test_too_many_recipients_gets_452(sink, config_factory):
    async with running_gateway(config_factory(sink.port, server={"max_recipients": 2})) as gw:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            await client.mail("a@sender.test")
            await client.rcpt("r1@example.test")
            await client.rcpt("r2@example.test")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("r3@example.test")
            assert refused.value.code == 452
            assert "4.5.3" in refused.value.message
            assert (await client.data(message())).code == 250
        [received] = await sink.wait_for(1)
        assert received.rcpts == ["r1@example.test", "r2@example.test"]


async def test_connections_over_the_per_ip_limit_get_421(sink, config_factory):
    import asyncio

    config = config_factory(sink.port, server={"max_connections_per_ip": 2})
    async with running_gateway(config) as gw:
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
        for reader, _ in held:
            assert (await reader.readline()).startswith(b"220")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"421 4.7.0")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after 421
        writer.close()
        for _, w in held:
            w.close()
        [event] = gw.events(kind="connection_refused")
        assert event.smtp_reply.startswith("421 4.7.0")


async def test_total_connection_limit_gets_421(sink, config_factory):
    import asyncio

    config = config_factory(sink.port, server={"max_connections": 1})
    async with running_gateway(config) as gw:
        reader1, writer1 = await asyncio.open_connection("127.0.0.1", gw.port)
        assert (await reader1.readline()).startswith(b"220")
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", gw.port)
        assert (await asyncio.wait_for(reader2.readline(), 5)).startswith(b"421 4.7.0 Too many")
        writer1.close()
        writer2.close()


async def test_long_line_in_data_is_refused(sink, config_factory):
    async with running_gateway(config_factory(sink.port, server={"max_line_length": 1000})) as gw:
        data = message(body="z" * 3000 + "\r\n")
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await send(gw.port, "a@sender.test", ["bob@example.test"], data)
        assert failed.value.code == 500
        assert "5.5.2" in failed.value.message
    assert sink.messages == []


async def test_idle_client_is_cut_off_with_421(sink, config_factory):
    import asyncio

    async with running_gateway(config_factory(sink.port, server={"command_timeout": 0.3})) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        assert (await reader.readline()).startswith(b"220")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest.startswith(b"421 4.4.2")
        writer.close()


async def test_slow_data_is_cut_off(sink, config_factory):
    import asyncio

    async with running_gateway(config_factory(sink.port, server={"data_timeout": 0.5})) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        await reader.readline()
        for cmd in (
            b"EHLO c\r\n",
            b"MAIL FROM:<a@sender.test>\r\n",
            b"RCPT TO:<b@example.test>\r\n",
            b"DATA\r\n",
        ):
            writer.write(cmd)
        writer.write(b"Subject: slow\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"354" in rest
        assert rest.rstrip().endswith(b"421 4.4.2 Timeout, closing connection")
        writer.close()
    assert sink.messages == []


async def test_not_an_open_relay(sink, config_factory):
    config = config_factory(sink.port, server={"accept_domains": ["example.test", ".corp.test"]})
    async with running_gateway(config) as gw:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            await client.mail("a@sender.test")
            assert (await client.rcpt("bob@example.test")).code == 250
            assert (await client.rcpt("ann@eu.corp.test")).code == 250
            for outside in ("victim@elsewhere.test", "x@example.test.evil.test", "y@notcorp.test"):
                with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                    await client.rcpt(outside)
                assert refused.value.code == 550
                assert "5.7.1 Relaying denied" in refused.value.message
            assert (await client.data(message())).code == 250
        [received] = await sink.wait_for(1)
        assert received.rcpts == ["bob@example.test", "ann@eu.corp.test"]
        assert len(gw.events(kind="rcpt_refused")) == 3


async def test_a_recipient_map_refuses_unknown_users_before_data(sink, config_factory, tmp_path):
    """Only the listed addresses (and @domains) are taken; the map is read again when it
    changes, and a map that no longer reads keeps the last good one."""
    import os
    import time

    recipients = tmp_path / "recipients"
    recipients.write_text("# mailboxes\nBob@Example.test\n@lists.test  # every list\n")
    config = config_factory(
        sink.port, server={"accept_domains": [], "recipient_map": str(recipients)}
    )

    async def rcpt_codes(port, addresses):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
            await client.mail("a@sender.test")
            codes = []
            for address in addresses:
                try:
                    codes.append(str((await client.rcpt(address)).code))
                except aiosmtplib.SMTPRecipientRefused as refused:
                    codes.append(f"{refused.code} {refused.message.split()[0]}")
            return codes

    async with running_gateway(config) as gw:
        wanted = ["bob@example.test", "any@lists.test", "carol@example.test", "x@elsewhere.test"]
        assert await rcpt_codes(gw.port, wanted) == ["250", "250", "550 5.1.1", "550 5.1.1"]
        # carol gets a mailbox: the file changes, the next look (made due at once) reads it.
        recipients.write_text("bob@example.test\ncarol@example.test\n")
        os.utime(recipients, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        gw.gateway.recipients.snapshot.loaded = float("-inf")
        await rcpt_codes(gw.port, ["carol@example.test"])  # starts the reload
        await gw.gateway.recipients.snapshot.task
        assert await rcpt_codes(gw.port, ["carol@example.test", "x@lists.test"]) == [
            "250",
            "550 5.1.1",
        ]
        # A broken map keeps the last good one (and logs why).
        recipients.write_text("not an address\n")
        os.utime(recipients, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        gw.gateway.recipients.snapshot.loaded = float("-inf")
        await rcpt_codes(gw.port, ["carol@example.test"])
        await gw.gateway.recipients.snapshot.task
        assert await rcpt_codes(gw.port, ["carol@example.test"]) == ["250"]
        # Each refusal is an event: two, carol before the reload, x@lists.test after it.
        assert len(gw.events(kind="rcpt_refused")) == 4


def test_a_broken_recipient_map_is_a_config_error_naming_the_line(tmp_path):
    from gateway.errors import ConfigError
    from gateway.smtp.recipients import read_map

    bad = tmp_path / "recipients"
    bad.write_text("bob@example.test\nbob example.test\n")
    with pytest.raises(ConfigError, match=r"recipients:2: 'bob example.test' is neither"):
        read_map(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_map(tmp_path / "missing")


async def test_backend_dropping_the_connection_in_the_middle_of_data(config_factory):
    import asyncio

    async def dropping_backend(reader, writer):
        # A mail store that takes the dialogue, starts reading the message, then goes away.
        writer.write(b"220 store ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith((b"EHLO", b"HELO")):
                writer.write(b"250 store\r\n")
            elif line.upper().startswith(b"DATA"):
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.read(100)  # part of the message, then the connection drops
                writer.transport.abort()
                return
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()

    backend = await asyncio.start_server(dropping_backend, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    try:
        async with running_gateway(config_factory(port)) as gw:
            await send_refused(
                gw.port, aiosmtplib.SMTPDataError, 451, "4.4.2", sender="a@sender.test"
            )
            [event] = gw.events(kind="message")
            assert event.smtp_reply.startswith("451 4.4.2")
            assert event.backend_reply  # what happened to the backend is on record
    finally:
        backend.close()
        await backend.wait_closed()
