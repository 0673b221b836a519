"""The store on a full or read-only disk: a small tmpfs the test mounts (needs root).

Messages that must be stored (quarantine) get 451 and stay with the sender; messages that
reach the backend are still delivered, their events going to the log in full; the gateway
stays up and writes again as soon as space (or write access) returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.service import STORE_PROBE_EVERY
from tests.conftest import message, running_gateway, send_message
from tests.sink import Received

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)"
)

QUARANTINED = {"HDR_MISSING_MESSAGE_ID": "quarantine"}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: small enough to fill in a moment."""
    mount = tmp_path / "fs"
    mount.mkdir()
    mount_tmpfs(mount, "2m")
    try:
        yield mount
    finally:
        unmount(mount)


def mount_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write zeros until the file system refuses (ENOSPC); return the filler file."""
    filler = directory / "filler"
    # Unbuffered: a buffered file would raise ENOSPC again when closed, with what it kept.
    handle = filler.open("wb", buffering=0)
    try:
        with pytest.raises(OSError, match="No space") as refused:  # noqa: PT012
            while True:
                handle.write(b"\0" * 65536)
    finally:
        handle.close()
    assert refused.value.errno == errno.ENOSPC
    # Whatever the page cache still held: the disk is full either way.
    with contextlib.suppress(OSError):
        os.sync()
    return filler


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


async def assert_quarantine_deferred(port: int) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await send_message(port, message(Message_ID=None))
    assert deferred.value.code == 451
    assert "4.3.0" in deferred.value.message


def subjects(received: list[Received]) -> list[str]:
    return [str(email.message_from_bytes(m.data)["Subject"]) for m in received]


def logged_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """Events that could not be stored, as the log carries them."""
    marker = "; the event: "
    return [
        json.loads(r.getMessage().split(marker, 1)[1])
        for r in caplog.records
        if marker in r.getMessage()
    ]


async def test_full_disk_defers_quarantine_and_recovers(sink, config_factory, small_fs, caplog):
    caplog.set_level(logging.ERROR)
    config = config_factory(
        sink.port, store={"path": str(small_fs / "store")}, policy={"force": QUARANTINED}
    )
    async with running_gateway(config) as gw:
        assert (await send_message(gw.port, message(subject="before"))).code == 250
        filler = fill(small_fs)

        await assert_quarantine_deferred(gw.port)
        held_files = gw.gateway.quarantine.directory
        assert not held_files.exists() or list(held_files.iterdir()) == []  # no half-written file
        assert "store" in await gw.gateway.readiness()
        # A clean message: the backend has nothing at risk, so it goes there unless the
        # store cannot even take a small write (then it is deferred). Whether SQLite still
        # finds room for its event on the full disk depends on the WAL pages it may reuse:
        # nothing is silent either way, the event is stored or in the log in full.
        try:
            delivered = (await send_message(gw.port, message(subject="while full"))).code
        except aiosmtplib.SMTPDataError as deferred:
            delivered = deferred.code
        assert delivered in (250, 451)
        stored = [e.subject for e in gw.events(kind="message")]
        logged = [e["subject"] for e in logged_events(caplog)]
        assert "while full" in stored + logged
        assert (subjects(sink.messages) == ["before", "while full"]) is (delivered == 250)
        failures = gw.gateway.metrics.store_failures
        assert failures.labels("quarantine")._value.get() >= 1

        filler.unlink()
        await asyncio.sleep(STORE_PROBE_EVERY + 0.1)  # the store is tried again by itself
        assert (await send_message(gw.port, message(Message_ID=None, subject="after"))).code == 250
        [held] = gw.gateway.quarantine.list()
        assert held.subject == "after"
        assert await gw.gateway.readiness() == {}
        assert [e.subject for e in gw.events(action="quarantine")] == ["after"]
        assert len(gw.events(kind="message")) >= 2  # before and after, stored


async def test_read_only_quarantine_defers_and_recovers(sink, config_factory, small_fs, caplog):
    # The quarantine directory is its own mount: a file system with files open for writing
    # (the SQLite store) cannot be remounted read-only, one with none open can.
    caplog.set_level(logging.ERROR)
    store = small_fs / "store"
    config = config_factory(sink.port, store={"path": str(store)}, policy={"force": QUARANTINED})
    (store / "quarantine").mkdir(parents=True)
    mount_tmpfs(store / "quarantine", "1m")
    try:
        async with running_gateway(config) as gw:
            assert (await send_message(gw.port, message(subject="before"))).code == 250
            remount(store / "quarantine", "ro")
            await assert_quarantine_deferred(gw.port)
            assert gw.gateway.quarantine.list() == []
            assert "quarantine" in (await gw.gateway.readiness())["store"]
            # The event of the deferral itself is stored (the database is writable).
            [deferred] = gw.events(action="quarantine")
            assert deferred.smtp_reply.startswith("451 4.3.0")

            remount(store / "quarantine", "rw")
            assert (
                await send_message(gw.port, message(Message_ID=None, subject="after"))
            ).code == 250
            assert [q.subject for q in gw.gateway.quarantine.list()] == ["after"]
            assert await gw.gateway.readiness() == {}
    finally:
        unmount(store / "quarantine")
    assert subjects(sink.messages) == ["before"]


def test_gateway_refuses_to_start_on_a_read_only_store(config_factory, small_fs):
    config = config_factory(store={"path": str(small_fs / "store")})
    remount(small_fs, "ro")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot open the event store" in done.stderr
    assert "Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
