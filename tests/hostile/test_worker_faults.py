"""A gateway that cannot be left broken: workers come back, reloads refuse bad files, limits
hold across workers. Real `mailmoat serve` processes with two workers on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from gateway.events import EventFilter
from gateway.smtp.limits import ConnectionCounts
from gateway.smtp.workers import restart_delay
from gateway.store import SqliteStore
from tests.conftest import free_port, message, send_message
from tests.smtp.test_lifecycle import ROOT, _children, log_of, start_process, wait_for_port

RULE = """\
rules:
  - name: SUBJECT_PROMO
    description: a rule that loads
    owner: test
    mode: active
    when:
      subject: {contains: promo}
    score: 1
"""


def rules_dir(tmp_path):
    rules = tmp_path / "rules"
    (rules / "lists").mkdir(parents=True)
    (rules / "promo.yaml").write_text(RULE)
    (rules / "lists" / "names.txt").write_text("alice\n")
    return rules


async def until(predicate, timeout: float = 20.0) -> None:
    """Poll ``predicate`` (run in a thread: it reads files) until it holds."""
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(predicate):
                return
            await asyncio.sleep(0.2)


async def two_workers(proc, timeout: float = 30.0) -> list[int]:
    async with asyncio.timeout(timeout):
        while True:
            children = await asyncio.to_thread(_children, proc.pid)
            if len(children) == 2:
                return children
            await asyncio.sleep(0.1)


async def replaced(proc, gone: int, timeout: float = 30.0) -> list[int]:
    async with asyncio.timeout(timeout):
        while True:
            children = await asyncio.to_thread(_children, proc.pid)
            if len(children) == 2 and gone not in children:
                return children
            await asyncio.sleep(0.1)


def readyz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
        return int(answer.status)


def kinds(store_dir) -> list[str]:
    store = SqliteStore(store_dir / "events.sqlite3")
    try:
        return [e.kind for e in store.list(EventFilter(limit=100)) if e.kind.startswith("reload")]
    finally:
        store.close()


def test_restart_delay_doubles_and_is_capped():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


async def test_workers_come_back_while_the_rules_on_disk_are_broken(sink, config_factory, tmp_path):
    rules = rules_dir(tmp_path)
    port, metrics = free_port(), free_port()
    config = config_factory(
        sink.port,
        server={"listen": f"127.0.0.1:{port}", "workers": 2,
                "metrics_listen": f"127.0.0.1:{metrics}"},
        rules={"enabled": True, "paths": [str(rules)]},
    )  # fmt: skip
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        workers = await two_workers(proc)
        (rules / "promo.yaml").write_text("rules: [ {name: BROKEN")  # broken on disk
        # Kill both workers (the one serving /metrics among them) three times in a row.
        for _ in range(3):
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            for pid in workers:
                workers = await replaced(proc, pid)
        await wait_for_port(port)
        assert (await send_message(port, message(subject="promo"))).code == 250
        await wait_for_port(metrics)
        ready = await asyncio.to_thread(readyz, metrics)
        assert ready == 200
        # SIGHUP with the file still broken: refused with an event, workers keep serving.
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload_failed" in kinds(tmp_path / "store"))
        (rules / "promo.yaml").write_text(RULE.replace("score: 1", "score: 2"))
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload" in kinds(tmp_path / "store"))
        assert (await send_message(port, message(subject="promo again"))).code == 250
        await sink.wait_for(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    log = log_of(config).read_text()
    assert "3 deaths in a row" in log
    assert "Traceback" not in log.split("reload refused")[0].rsplit("\n", 5)[-1]


@pytest.mark.parametrize("breakage", ["dangling symlink", "list not UTF-8"])
async def test_a_reload_with_an_unreadable_file_is_refused_not_crashed(
    sink, config_factory, tmp_path, breakage
):
    rules = rules_dir(tmp_path)
    port = free_port()
    config = config_factory(
        sink.port,
        server={"listen": f"127.0.0.1:{port}"},
        rules={"enabled": True, "paths": [str(rules)]},
    )
    proc = await start_process(config)
    try:
        await wait_for_port(port)
        if breakage == "dangling symlink":
            (rules / "gone.yaml").symlink_to(tmp_path / "no-such-file.yaml")
        else:
            (rules / "lists" / "names.txt").write_bytes(b"alice\n\xff\xfe bob\n")
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload_failed" in kinds(tmp_path / "store"))
        assert (await send_message(port, message(subject="still serving"))).code == 250
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    log = log_of(config).read_text()
    assert "Task exception was never retrieved" not in log
    # The linter names the file, with no traceback.
    lint = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "rules", "lint", str(rules)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert lint.returncode != 0
    assert "Traceback" not in lint.stderr + lint.stdout
    expected = "gone.yaml:0: error: cannot read" if breakage == "dangling symlink" else (
        "names.txt:2: error: not UTF-8 text")  # fmt: skip
    assert expected in lint.stdout + lint.stderr


async def test_connections_per_ip_are_counted_across_workers(sink, config_factory):
    port = free_port()
    config = config_factory(
        sink.port,
        server={"listen": f"127.0.0.1:{port}", "workers": 2, "max_connections_per_ip": 5},
    )
    proc = await start_process(config)
    streams = []
    try:
        # Not wait_for_port: its probe, closed before the greeting, holds a slot until the
        # gateway notices; here every slot must be the test's own.
        await until(lambda: log_of(config).read_text().count("listening on") == 2)
        greetings = []
        for _ in range(12):  # one at a time: each worker sees the others' count
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            streams.append(writer)
            greetings.append(await asyncio.wait_for(reader.readline(), 10))
        assert sum(g.startswith(b"220") for g in greetings) == 5, greetings
        assert sum(g.startswith(b"421 4.7.0") for g in greetings) == 7
    finally:
        for writer in streams:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


def test_connection_counts_never_undercount_and_forget_a_dead_worker():
    counts = ConnectionCounts(workers=2, buckets=64)  # few buckets: collisions happen
    addresses = [f"192.0.2.{n}" for n in range(200)]
    for worker in (0, 1):
        counts.worker = worker
        for ip in addresses[:50]:
            counts.add(ip, 1)
    assert all(counts.count(ip) >= 2 for ip in addresses[:50])
    counts.clear(1)
    assert all(counts.count(ip) >= 1 for ip in addresses[:50])
    counts.worker = 0
    for ip in addresses[:50]:
        counts.add(ip, -1)
    assert all(counts.count(ip) == 0 for ip in addresses)
