"""One contract, two engines: every store operation against SQLite and Debian's PostgreSQL.

Real parts: an SQLite file, and a real PostgreSQL server started by the tests (initdb in a
private directory, a loopback port), each test on a database of its own.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gateway.errors import StoreError, UnknownIdError
from gateway.events import EventFilter, Retained, SecurityEvent
from gateway.store import MAX_ALLOWS, QuarantineRow, SqliteStore, Store
from gateway.store.postgres import PostgresStore, redacted

NOW = time.time()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        engine: Store = SqliteStore(tmp_path / "events.sqlite3")
    else:
        engine = PostgresStore(request.getfixturevalue("postgres_url"))
    yield engine
    engine.close()


def event(n: int, **fields) -> SecurityEvent:
    values = {
        "id": f"{n:016x}.1", "kind": "message", "time": NOW - 60 * n,
        "mail_from": f"user{n % 3}@sender{n % 2}.test", "rcpts": (f"rcpt{n % 2}@example.test",),
        "subject": f"Invoice number {n}", "action": "accept" if n % 3 else "quarantine",
        "client_ip": f"192.0.2.{n}", "message_id": f"<m{n}@sender.test>",
        "symbols": ({"name": "HDR_X", "score": 1.0, "check": "headers"},),
    }  # fmt: skip
    values.update(fields)
    return SecurityEvent(**values)


def ids(events: list[SecurityEvent]) -> list[int]:
    return [int(e.id.split(".")[0], 16) for e in events]


def test_events_are_added_in_groups_and_found_by_every_filter(store):
    store.add_many([(event(n), None) for n in range(1, 13)])
    store.add(event(20, kind="rcpt_refused", action="refused", subject="",
                    backend_reply="250 2.0.0 Ok: queued as 4XyZ9QwE"))  # fmt: skip
    assert store.get(f"{1:016x}.1").subject == "Invoice number 1"
    with pytest.raises(UnknownIdError):
        store.get(f"{99:016x}.1")
    assert ids(store.list(EventFilter(limit=3))) == [1, 2, 3]  # newest first
    assert ids(store.list(EventFilter(since=NOW - 150, limit=50))) == [1, 2]
    assert ids(store.list(EventFilter(until=NOW - 600, limit=50))) == [11, 12, 20]
    assert ids(store.list(EventFilter(action="quarantine", limit=50))) == [3, 6, 9, 12]
    assert ids(store.list(EventFilter(sender="USER1@sender1.test", limit=50))) == [1, 7]
    assert ids(store.list(EventFilter(kind="rcpt_refused", limit=50))) == [20]
    assert ids(store.list(EventFilter(recipient="rcpt0@example.test", kind="message",
                                      limit=50))) == [2, 4, 6, 8, 10, 12]  # fmt: skip
    assert ids(store.list(EventFilter(client_ip="192.0.2.5", limit=50))) == [5]
    assert ids(store.list(EventFilter(message_id="m4@sender.test", limit=50))) == [4]
    assert ids(store.list(EventFilter(queue_id="4XyZ9QwE", limit=50))) == [20]
    assert ids(store.list(EventFilter(text="invoice 7", limit=50))) == [7]
    assert ids(store.list(EventFilter(symbol="HDR_X", since=NOW - 200, limit=50))) == [1, 2, 3]
    page = store.list(EventFilter(limit=2))
    after = store.list(EventFilter(limit=2, before=(page[-1].time, page[-1].id)))
    assert ids(after) == [3, 4]  # keyset pagination
    assert store.find_by_message_id("<m4@sender.test>") == [f"{4:016x}.1"]


def test_retained_messages_and_their_expiry(store):
    store.add(event(1), Retained(b"raw one", {"version": 3, "text": "x"}, NOW - 10))
    store.add(event(2), Retained(b"raw two", None, NOW + 3600))
    store.add(event(3))
    assert store.retained(f"{1:016x}.1") == Retained(b"raw one", {"version": 3, "text": "x"},
                                                     NOW - 10)  # fmt: skip
    assert store.retained(f"{3:016x}.1") is None
    assert [(e.subject, raw) for e, raw in store.retained_messages(None, None)] == [
        ("Invoice number 2", b"raw two"), ("Invoice number 1", b"raw one"),
    ]  # fmt: skip
    assert store.purge(now=NOW) == {"raw_messages": 1, "events": 0}
    assert store.retained(f"{1:016x}.1").raw is None
    # Old events go, except the labelled and the held ones.
    store.add_label(f"{2:016x}.1", "spam", "console", "ana")
    store.hold(QuarantineRow(f"{3:016x}.1", NOW, "a@b.test", ("c@d.test",), "s", 11.0, "r", 10,
                             "held"))  # fmt: skip
    store.add(event(4))
    assert store.purge(now=NOW, events_before=NOW)["events"] == 2  # 1 and 4
    assert ids(store.list(EventFilter(limit=50))) == [2, 3]
    assert store.list(EventFilter(text="invoice", limit=50)) != []


def test_labels_their_history_and_the_label_in_force(store):
    for n in (1, 2, 3):
        store.add(event(n), Retained(b"raw", {"version": 1}, NOW + 60))
    first = f"{1:016x}.1"
    store.add_label(first, "spam", "console", "ana")
    store.add_label(first, "ham", "console", "bob", "a newsletter")
    store.add_label(f"{2:016x}.1", "phish", "user", "carol@example.test")
    assert store.current_label(first).label == "ham"
    assert [x.label for x in store.labels(first)] == ["spam", "ham"]
    assert store.retained(first).expires is None  # labelled: kept for training
    with pytest.raises(ValueError, match="label must be one of"):
        store.add_label(first, "maybe", "console", "ana")
    with pytest.raises(UnknownIdError):
        store.add_label(f"{9:016x}.1", "spam", "console", "ana")
    assert ids(store.list(EventFilter(label="ham", limit=50))) == [1]
    assert ids(store.list(EventFilter(label="none", limit=50))) == [3]
    labelled = store.labelled_messages(None, None)
    assert [(m["event_id"], m["label"], m["raw"]) for m in labelled] == [
        (f"{2:016x}.1", "phish", b"raw"), (first, "ham", b"raw"),
    ]  # fmt: skip
    assert store.withdraw_labels(first, "ana") == 2
    assert store.current_label(first) is None
    assert "[withdrawn by ana]" in store.labels(first)[0].note


def test_users_sessions_and_single_use_links(store):
    store.add_user("ana", "hash-1", "analyst")
    assert store.user("ana")["role"] == "analyst"
    assert store.user("nobody") is None
    session = store.start_session("ana", 3600)
    assert store.session_user(session) == "ana"
    store.add_user("ana", "hash-2", "admin")  # a new password ends her sessions
    assert store.session_user(session) is None
    session = store.start_session("ana", 3600)
    store.set_user("ana", disabled=True)
    assert store.session_user(session) is None
    assert store.user("ana")["disabled"] == 1
    store.set_user("ana", role="viewer", disabled=False)
    assert [(u["name"], u["role"], u["disabled"]) for u in store.users()] == [("ana", "viewer", 0)]
    expired = store.start_session("ana", -1)
    assert store.session_user(expired) is None
    live = store.start_session("ana", 60)
    store.end_session(live)
    assert store.session_user(live) is None
    assert store.use_link("token-1")
    assert not store.use_link("token-1")
    assert store.use_link("token-2")


def test_allowed_senders_per_recipient(store):
    assert store.allow_sender("Bob@Example.test", "A@Sender.test", "bob")
    assert store.allow_sender("bob@example.test", "a@sender.test", "bob")  # again: one entry
    store.allow_sender("carol@example.test", "d@sender.test", "carol")
    assert store.sender_allows() == {"bob@example.test": {"a@sender.test"},
                                     "carol@example.test": {"d@sender.test"}}  # fmt: skip
    assert store.sender_allows("BOB@example.test") == {"bob@example.test": {"a@sender.test"}}
    store.forget_sender("bob@example.test", "a@sender.test")
    assert store.sender_allows("bob@example.test") == {}
    for n in range(MAX_ALLOWS):
        assert store.allow_sender("dan@example.test", f"s{n}@x.test", "dan")
    assert not store.allow_sender("dan@example.test", "one-more@x.test", "dan")
    assert store.allow_sender("dan@example.test", "s0@x.test", "dan")  # already there: fine


def test_the_quarantine_index(store):
    rows = [
        QuarantineRow(f"{n:016x}.1", NOW - n, f"s{n}@sender.test", (f"Rcpt{n % 2}@example.test",),
                      f"Subject {n} 100%_off", 11.0 + n, "score", 100 * n, "held")
        for n in range(1, 6)
    ]  # fmt: skip
    for row in rows:
        store.hold(row)
    assert store.held(rows[0].id) == rows[0]
    with pytest.raises(UnknownIdError):
        store.held(f"{9:016x}.1")
    assert [r.id for r in store.quarantine_list("held", 3)] == [r.id for r in rows[:3]]
    assert [r.id for r in store.quarantine_list("held", 50, recipient="rcpt1@EXAMPLE.test")] == [
        rows[0].id, rows[2].id, rows[4].id,
    ]  # fmt: skip
    assert [r.id for r in store.quarantine_list(None, 50, search="subject 4")] == [rows[3].id]
    assert [r.id for r in store.quarantine_list(None, 50, search="100%_")] == [r.id for r in rows]
    assert store.quarantine_list(None, 50, search="100%x") == []  # % and _ are literal
    store.set_held_status(rows[1].id, "released")
    assert store.held(rows[1].id).status == "released"
    assert rows[1].id not in [r.id for r in store.quarantine_list("held", 50)]
    assert store.quarantine_list("released", 50)[0].to_dict()["rcpts"] == ["Rcpt0@example.test"]


def test_what_the_console_report_and_replay_read(store):
    ml = {"name": "ML_SPAM", "score": 6.0, "check": "classifier"}
    fail = {"name": "AV_FAIL", "score": 0.0, "check": "antivirus"}
    temp = {"name": "SPF_TEMPERROR", "score": 0.0, "check": "auth"}
    rule = {"name": "MY_RULE", "score": 2.0, "check": "rules"}
    store.add_many([
        (event(1, symbols=(ml, rule)), None), (event(2, symbols=(fail,)), None),
        (event(3, symbols=(temp, rule)), None), (event(4, mail_from="x@other.test"), None),
        (event(5, kind="rcpt_refused", action="refused"), None),
    ])  # fmt: skip
    store.add_label(f"{1:016x}.1", "ham", "console", "ana")  # ML_SPAM on ham: a false positive
    store.add_label(f"{3:016x}.1", "spam", "console", "ana")
    since = NOW - 3600
    hours = store.verdicts_by_hour(since)
    assert sum(sum(v.values()) for v in hours.values()) == 4  # messages only
    assert all(0 <= hour < 24 for hour in hours)
    assert dict(store.symbol_counts(since))["MY_RULE"] == 2
    # Ties in name order.
    assert store.top_senders(since, 2) == [("user0@sender1.test", 1), ("user1@sender1.test", 1)]
    assert dict(store.top_sender_domains(since, 10)) == {"sender1.test": 2, "sender0.test": 1,
                                                          "other.test": 1}  # fmt: skip
    assert store.failure_counts(since) == [("AV_FAIL", 1), ("SPF_TEMPERROR", 1)]
    assert sorted(store.labels_against_actions(since)) == [("ham", "accept", 1),
                                                          ("spam", "quarantine", 1)]  # fmt: skip
    days = Counter(time.strftime("%Y-%m-%d", time.gmtime(NOW - 60 * n)) for n in (1, 3))
    assert store.symbol_hits_per_day(since)["MY_RULE"] == dict(days)  # UTC days
    assert store.symbol_hits_on_ham(since) == {"ML_SPAM": 1, "MY_RULE": 1}
    assert store.model_verdicts(since) == {"ML_SPAM": (1, 6.0)}


def test_a_store_that_cannot_answer_raises_store_error(store):
    store.close()
    with pytest.raises(StoreError):
        store.list(EventFilter(limit=1))


def test_a_postgres_url_is_never_shown_with_its_password():
    assert redacted("postgresql://mm:s3cret@db1:5432/mail") == "postgresql://mm:***@db1:5432/mail"
    assert redacted("postgresql://db1/mail") == "postgresql://db1/mail"


def test_postgres_expiry_drops_whole_day_partitions_and_keeps_labelled_and_held(postgres_url):
    store = PostgresStore(postgres_url)
    old = NOW - 10 * 86400
    made = store.ensure_partitions(NOW - 12 * 86400, NOW)
    day = time.strftime("p%Y%m%d", time.gmtime(old))
    assert day in made
    store.add_many([
        (event(1, time=old), Retained(b"raw 1", None, None)),
        (event(2, time=old + 1), None),
        (event(3, time=old + 2, action="quarantine"), None),  # held: kept from the start
        (event(4, time=NOW), None),
    ])  # fmt: skip
    store.add_label(f"{2:016x}.1", "spam", "console", "ana")  # labelled: moved to kept
    counts = store.purge(now=NOW, events_before=NOW - 5 * 86400)
    assert counts["events"] == 1
    tables = {r["relname"] for r in store.query("SELECT relname FROM pg_class")}
    assert f"events_{day}" not in tables  # the day went as a whole partition
    assert f"event_symbols_{day}" not in tables
    assert ids(store.list(EventFilter(limit=50))) == [4, 3, 2]
    assert ids(store.list(EventFilter(recipient="rcpt0@example.test", limit=50))) == [4, 2]
    assert ids(store.list(EventFilter(symbol="HDR_X", limit=50))) == [4, 3, 2]
    assert store.retained(f"{1:016x}.1") is None
    store.close()
