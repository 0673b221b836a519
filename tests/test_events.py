"""The SQLite event store: round trip, filters, id validation, JSON lines."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError, UnknownIdError
from gateway.events import (
    EventFilter,
    EventRecorder,
    JsonLinesSink,
    SecurityEvent,
    parse_time,
    validate_id,
)
from gateway.store import SqliteStore


def event(n, **kw):
    fields = dict(
        id=f"{n:016x}.1",
        kind="message",
        time=1_700_000_000 + n,
        mail_from="Alice@Sender.test",
        action="accept",
        score=1.0,
        symbols=({"name": "HDR_MISSING_DATE", "score": 1.0, "details": {}},),
    )
    fields.update(kw)
    return SecurityEvent(**fields)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "events.sqlite3")
    yield s
    s.close()


def test_round_trip_and_schema(store):
    original = event(1, rcpts=("b@x.test",), timings_ms={"parse": 0.5}, subject="Ünïcode")
    store.add(original)
    assert store.get(original.id) == original
    assert original.to_dict()["schema"] == 1
    mode = store.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_json_line_is_built_once_and_is_the_events_shape():
    original = event(1, subject="first")
    line = original.to_json()
    assert original.to_json() is line  # the events log and the store share one line
    assert json.loads(line) == original.to_dict()
    assert "_json" not in original.to_dict()
    changed = dataclasses.replace(original, subject="second")
    assert json.loads(changed.to_json())["subject"] == "second"  # not the first's line
    assert SecurityEvent.from_dict(json.loads(line)) == original


def test_filters(store):
    store.add(event(1))
    store.add(
        event(
            2,
            action="reject",
            mail_from="eve@evil.test",
            symbols=({"name": "HDR_DUPLICATE", "score": 2.0, "details": {}},),
        )
    )
    store.add(event(3, kind="rcpt_refused", action="refused"))
    assert [e.id for e in store.list(EventFilter())] == [event(3).id, event(2).id, event(1).id]
    assert [e.id for e in store.list(EventFilter(action="reject"))] == [event(2).id]
    assert [e.id for e in store.list(EventFilter(sender="EVE@evil.test"))] == [event(2).id]
    assert [e.id for e in store.list(EventFilter(symbol="HDR_DUPLICATE"))] == [event(2).id]
    assert [e.id for e in store.list(EventFilter(kind="rcpt_refused"))] == [event(3).id]
    assert [e.id for e in store.list(EventFilter(since=1_700_000_002))] == [
        event(3).id,
        event(2).id,
    ]
    assert len(store.list(EventFilter(limit=1))) == 1


def test_indexes_exist(store):
    names = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"events_time", "events_sender", "events_action", "event_symbols_lookup"} <= names


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "0000000000000000", "x" * 16 + ".1", "", "0" * 16 + ".1/.."]
)
def test_ids_are_validated(store, bad):
    with pytest.raises(UnknownIdError):
        validate_id(bad)
    with pytest.raises(UnknownIdError):
        store.get(bad)


def test_unknown_id(store):
    with pytest.raises(UnknownIdError, match="no event"):
        store.get("0" * 16 + ".9")


def test_recorder_writes_jsonl_too(store, tmp_path):
    path = tmp_path / "log" / "events.jsonl"
    recorder = EventRecorder(store, JsonLinesSink(path))
    recorder.record(event(5))
    [line] = path.read_text().splitlines()
    assert json.loads(line)["id"] == event(5).id
    assert store.get(event(5).id).id == event(5).id


def test_parse_time():
    now = time.time()
    assert parse_time("2h", now) == pytest.approx(now - 7200)
    assert parse_time("7d", now) == pytest.approx(now - 7 * 86400)
    assert parse_time("2026-11-21T00:00:00") == 1795219200.0
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("last tuesday")


def test_wal_checkpoints_run_in_the_background_not_in_commits(tmp_path):
    import sqlite3

    path = tmp_path / "events.sqlite3"

    def in_database_file() -> int:
        # immutable=1 reads the main file alone, not the WAL: what checkpoints have copied.
        reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return reader.execute("SELECT count(*) FROM events").fetchone()[0]
        except sqlite3.DatabaseError:  # no schema copied yet, or a checkpoint is writing
            return 0
        finally:
            reader.close()

    store = SqliteStore(path, checkpoint_every=0.2)
    try:
        # Commits never checkpoint (the thread does): SQLite's automatic checkpoint is off.
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for first in range(1, 3001, 100):
            store.add_many([(event(n), None) for n in range(first, first + 100)])
        deadline = time.monotonic() + 10
        copied = in_database_file()
        while copied < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
            copied = in_database_file()
        assert copied == 3000
    finally:
        store.close()
    assert not store.checkpointer.thread.is_alive()


async def test_a_group_waits_in_a_thread_while_another_process_holds_the_store(tmp_path):
    import asyncio
    import sqlite3

    from gateway.errors import StoreBusy
    from gateway.service import GroupCommitter

    path = tmp_path / "events.sqlite3"
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)  # as the other worker would
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(StoreBusy):
            store.add_many([(event(1), None)], wait=False)  # on the loop: never waits
        committer = GroupCommitter(EventRecorder(store))
        submitted = asyncio.create_task(committer.submit(event(2), None))
        started = time.monotonic()
        for _ in range(20):  # the loop keeps running while the group waits for the lock
            await asyncio.sleep(0.01)
        # Waiting for the lock on the loop would have taken the busy timeout (5 s) first.
        assert time.monotonic() - started < 2.5
        assert not submitted.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(submitted, 10)
        assert store.get(event(2).id).id == event(2).id
        with pytest.raises(UnknownIdError):
            store.get(event(1).id)  # the busy attempt left nothing behind
    finally:
        other.close()
        store.close()


def _open_at_once(path: str, barrier: Any, results: Any) -> None:
    """A worker's start: open the store as soon as the other worker does."""
    barrier.wait()
    try:
        SqliteStore(Path(path)).close()
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_workers_opening_a_new_store_at_once_both_succeed(tmp_path):
    """SQLite does not call the busy handler for the switch to WAL: of two workers opening a
    new file at once, one often failed with "database is locked" (and was forked again)."""
    context = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(30):  # the race was lost in about half the trials
        barrier, results = context.Barrier(2), context.Queue()
        path = str(tmp_path / f"{trial}.sqlite3")
        workers = [
            context.Process(target=_open_at_once, args=(path, barrier, results)) for _ in "ab"
        ]
        for worker in workers:
            worker.start()
        outcomes += [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(30)
    assert outcomes == ["ok"] * 60, [o for o in outcomes if o != "ok"][:3]
