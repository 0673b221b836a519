"""The gateway as a process: SIGTERM drains transactions in flight, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest

from gateway.events import EventFilter
from gateway.store import SqliteStore
from tests.conftest import free_port, message, running_gateway, send_message

ROOT = Path(__file__).resolve().parents[2]


def log_of(config: Path) -> Path:
    """Where start_process sends the gateway's log."""
    return config.with_suffix(".log")


async def start_process(config: Path) -> asyncio.subprocess.Process:
    """`mailmoat serve` in its own process, its log appended to log_of(config).

    A file, not a pipe: serve logs every event, and a pipe nobody drains fills up and
    stalls the gateway in the middle of a test.
    """
    with log_of(config).open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def wait_for_port(port: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return


async def test_sigterm_during_a_transaction_completes_it(sink, config_factory):
    port = free_port()
    config = config_factory(sink.port, server={"listen": f"127.0.0.1:{port}", "shutdown_grace": 10})
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        for cmd in (
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@sender.test>\r\n",
            b"RCPT TO:<bob@example.test>\r\n",
            b"DATA\r\n",
        ):
            writer.write(cmd)
        async with asyncio.timeout(10):
            while not (await reader.readline()).startswith(b"354"):
                pass
        writer.write(b"Subject: in flight\r\nFrom: a@sender.test\r\n\r\nfirst half\r\n")
        await writer.drain()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        await idle_reader.readline()

        proc.send_signal(signal.SIGTERM)
        # An idle session is told the service is going away.
        assert (await asyncio.wait_for(idle_reader.readline(), 5)).startswith(b"421 4.3.2")
        # New connections are no longer accepted.
        await asyncio.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # The transaction in flight still completes.
        writer.write(b"second half\r\n.\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)
        assert b"250 2.0.0 OK: queued as" in rest
        assert rest.rstrip().endswith(b"421 4.3.2 Service shutting down, try again later")
        [received] = await sink.wait_for(1)
        assert b"first half\r\nsecond half\r\n" in received.data
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        writer.close()
        idle_writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_reloads_and_a_broken_config_keeps_the_old_pipeline(sink, config_factory):
    port = free_port()
    config = config_factory(sink.port, server={"listen": f"127.0.0.1:{port}"})
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        good = config.read_text()
        # A force rule added on the fly takes effect after SIGHUP.
        config.write_text(good + "\n[checks.headers]\nenabled = true\n")
        config.write_text(
            good.replace("[policy]", '[policy]\nforce = { HDR_MISSING_DATE = "reject" }')
        )
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        with pytest.raises(aiosmtplib.SMTPDataError) as rejected:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
                await client.sendmail("a@sender.test", ["bob@example.test"], message(Date=None))
        assert rejected.value.code == 554
        # A broken file is refused; the service keeps its last good pipeline.
        config.write_text(good + "\n[policy\nbroken")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        with pytest.raises(aiosmtplib.SMTPDataError):
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
                await client.sendmail("a@sender.test", ["bob@example.test"], message(Date=None))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        stderr = log_of(config).read_text()
        assert "reload refused" in stderr
        assert "TOML syntax error" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_reload_in_process_records_events(sink, config_factory):
    config = config_factory(sink.port)
    async with running_gateway(config) as gw:
        old = gw.gateway.pipeline
        assert await gw.gateway.reload()
        assert gw.gateway.pipeline is not old
        config.write_text(config.read_text() + "\n[checks.nonexistent]\nenabled = true\n")
        current = gw.gateway.pipeline
        assert not await gw.gateway.reload()
        assert gw.gateway.pipeline is current
        kinds = sorted(e.kind for e in gw.events())
        assert kinds == ["reload", "reload_failed"]
        [failed] = gw.events(kind="reload_failed")
        assert "checks.nonexistent" in failed.reason


@pytest.fixture
def tls_pair(tmp_path):
    """A self-signed certificate and key made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mx.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_is_offered_and_used(sink, config_factory, tls_pair):
    cert, key = tls_pair
    config = config_factory(sink.port, server={"tls_cert": str(cert), "tls_key": str(key)})
    async with running_gateway(config) as gw:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=gw.port, timeout=10, start_tls=True, validate_certs=False
        ) as client:
            assert client.get_transport_info("sslcontext") is not None
            assert not client.supports_extension("auth")  # an inbound gateway offers no AUTH
            await client.sendmail("a@sender.test", ["bob@example.test"], message())
        [event] = gw.events(kind="message")
        assert event.tls.startswith("TLS")
    assert len(sink.messages) == 1


async def test_require_tls_refuses_mail_before_starttls(sink, config_factory, tls_pair):
    cert, key = tls_pair
    config = config_factory(
        sink.port, server={"tls_cert": str(cert), "tls_key": str(key), "require_tls": True}
    )
    async with (
        running_gateway(config) as gw,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10, start_tls=False) as client,
    ):
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.mail("a@sender.test")
        assert refused.value.code == 530


async def test_maildir_backend_delivers_durably(config_factory, tmp_path):
    config = config_factory(None)  # the embedded default kind: maildir
    async with running_gateway(config) as gw:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
            refused, _ = await client.sendmail(
                "a@sender.test", ["Bob@Example.test", "../../etc@example.test"], message()
            )
        assert refused == {}
    boxes = sorted(p.name for p in (tmp_path / "maildir").iterdir())
    assert boxes == ["_._.._etc@example.test", "bob@example.test"]
    [delivered] = list((tmp_path / "maildir" / "bob@example.test" / "new").iterdir())
    data = delivered.read_bytes()
    assert data.startswith(b"Delivered-To: Bob@Example.test\n")
    assert b"X-Mailmoat-Action: accept\n" in data
    assert b"\r\n" not in data  # maildir files use local line endings
    assert not list((tmp_path / "maildir" / "bob@example.test" / "tmp").iterdir())
    assert os.stat(delivered).st_size == len(data)


async def test_maildir_write_failure_gives_451(config_factory, tmp_path):
    blocker = tmp_path / "maildir"
    blocker.write_text("a file where the maildir should be")
    async with running_gateway(config_factory(None)) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
                await client.sendmail("a@sender.test", ["bob@example.test"], message())
        assert failed.value.code == 451
        [event] = gw.events(kind="message")
        assert event.smtp_reply.startswith("451 4.3.0")


async def test_maildir_failure_for_one_recipient_leaves_no_copy(config_factory, tmp_path):
    # The second mailbox cannot be made; the sender gets 451 and will retry the whole
    # message, so the copy already written for the first must go (no duplicate later).
    (tmp_path / "maildir").mkdir()
    (tmp_path / "maildir" / "carol@example.test").write_text("a file, not a mailbox")
    async with running_gateway(config_factory(None)) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client:
                await client.sendmail(
                    "a@sender.test", ["bob@example.test", "carol@example.test"], message()
                )
        assert failed.value.code == 451
    assert list((tmp_path / "maildir" / "bob@example.test" / "new").iterdir()) == []
    assert list((tmp_path / "maildir" / "bob@example.test" / "tmp").iterdir()) == []


async def send_one(port):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        await client.sendmail("a@sender.test", ["bob@example.test"], message())


async def test_backend_starttls(config_factory, tls_pair):
    import ssl

    from tests.sink import Sink

    cert, key = tls_pair
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = await Sink(tls_context=context).start()
    try:
        config = config_factory(sink.port, backend={"starttls": True, "verify_tls": False})
        async with running_gateway(config) as gw:
            await send_one(gw.port)
        [received] = await sink.wait_for(1)
        assert received.rcpts == ["bob@example.test"]
        [protocol] = sink.protocols
        assert protocol.session.ssl is not None  # the sink saw STARTTLS
        # With verification on, the self-signed backend is refused: 451, nothing lost.
        config = config_factory(sink.port, backend={"starttls": True, "verify_tls": True})
        async with running_gateway(config) as gw:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await send_one(gw.port)
            assert refused.value.code == 451
    finally:
        await sink.stop()


async def send_numbered(port: int, count: int) -> None:
    """``count`` messages, one session each (a new connection may reach either worker)."""
    for n in range(count):
        await send_message(port, message(subject=f"n{n}"))


def not_events(log: Path) -> str:
    """The log's last lines other than events (which would push a worker's death out)."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(x for x in lines if "gateway.events:" not in x)[-3000:]


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == pid]


def _parent(proc_dir: Path) -> int:
    try:
        status = (proc_dir / "status").read_text()
    except OSError:  # the process is gone
        return -1
    line = next((x for x in status.splitlines() if x.startswith("PPid:")), "PPid: -1")
    return int(line.split()[1])


async def test_two_workers_share_the_port_and_stop_together(sink, config_factory, tmp_path):
    port = free_port()
    pid_file = tmp_path / "gw.pid"
    config = config_factory(
        sink.port, server={"listen": f"127.0.0.1:{port}", "workers": 2, "pid_file": str(pid_file)}
    )
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        await send_numbered(port, 20)
        await sink.wait_for(20)
        assert int(pid_file.read_text()) == proc.pid  # the parent, which minds the workers
        children = await asyncio.to_thread(_children, proc.pid)
        # (a worker that died is in the log: the failure shows it, less the events)
        assert len(children) == 2, not_events(log_of(config))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert not pid_file.exists()
        with pytest.raises(ConnectionRefusedError):  # nobody holds the shared socket
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_worker_that_dies_is_started_again(sink, config_factory, tmp_path):
    port = free_port()
    config = config_factory(
        sink.port,
        server={"listen": f"127.0.0.1:{port}", "workers": 2, "pid_file": str(tmp_path / "p")},
    )
    proc = await start_process(config)
    try:
        await wait_for_port(port)  # the parent listens before it forks: wait for both
        async with asyncio.timeout(30):
            while True:
                first = await asyncio.to_thread(_children, proc.pid)
                if len(first) == 2:
                    break
                await asyncio.sleep(0.1)
        os.kill(first[0], signal.SIGKILL)  # a crash of one worker
        async with asyncio.timeout(30):
            while True:
                now = await asyncio.to_thread(_children, proc.pid)
                if len(now) == 2 and first[0] not in now:
                    break
                await asyncio.sleep(0.2)
        await wait_for_port(port)
        await send_numbered(port, 10)
        await sink.wait_for(10)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0  # restarted, so not a failure
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "starting it again" in log_of(config).read_text()


async def test_mailmoat_reload_signals_the_running_gateway(sink, config_factory, tmp_path):
    port = free_port()
    config = config_factory(sink.port, server={"listen": f"127.0.0.1:{port}"})
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway", "reload", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"asked the gateway (pid {proc.pid}) to reload" in done.stdout
        store = SqliteStore(tmp_path / "store" / "events.sqlite3")
        try:
            async with asyncio.timeout(20):
                while True:
                    if store.list(EventFilter(kind="reload", limit=5)):
                        break
                    await asyncio.sleep(0.2)
        finally:
            store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    # Nothing running: a clear answer, not a traceback.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "reload", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no running gateway" in done.stderr
