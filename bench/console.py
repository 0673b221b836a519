"""Event list queries on a store of a million events, as the console runs them.

Run:  .venv/bin/python -m bench.console [--events N]

Fills a fresh SQLite store (the real schema, bulk-inserted for speed) with N events spread
over 30 days, then times each filter of the events page (first page of 50, newest first)
and the overview's queries.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import percentile, table
from gateway.config import Settings, StoreConfig
from gateway.events import EventFilter
from gateway.store import SqliteStore
from gateway.web import overview

ACTIONS = ["accept"] * 80 + ["tag"] * 10 + ["quarantine"] * 5 + ["reject"] * 5
SYMBOLS = ["HDR_MISSING_DATE", "SPF_PASS", "DKIM_VALID", "ML_HAM", "ML_SPAM", "DMARC_FAIL"]
WORDS = ["invoice", "meeting", "report", "offer", "lunch"]
WORDS += ["urgent", "payment", "update", "newsletter", "order"]


def fill(store: SqliteStore, count: int, now: float) -> None:
    rng = random.Random(1)
    db = store.db
    db.execute("BEGIN")
    for n in range(count):
        t = now - rng.random() * 30 * 86400
        event_id = f"{n:016x}.1"
        sender = f"user{rng.randrange(5000)}@domain{rng.randrange(500)}.example"
        rcpt = f"person{rng.randrange(2000)}@corp.example"
        subject = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {n}"
        action = rng.choice(ACTIONS)
        symbols = rng.sample(SYMBOLS, 3)
        record = {"schema": 1, "id": event_id, "kind": "message", "time": t, "mail_from": sender,
                  "rcpts": [rcpt], "subject": subject, "action": action}  # fmt: skip
        record["symbols"] = [{"name": s, "score": 1.0} for s in symbols]
        data = json.dumps(record)
        cursor = db.execute(
            "INSERT INTO events (id, time, kind, client_ip, mail_from, action, score, subject,"
            " message_id, data) VALUES (?, ?, 'message', ?, ?, ?, 1.0, ?, '', ?)",
            (event_id, t, f"198.51.100.{n % 250}", sender, action, subject, data),
        )
        db.executemany(
            "INSERT INTO event_symbols VALUES (?, ?, 1.0, ?)", [(event_id, s, t) for s in symbols]
        )
        db.execute("INSERT INTO event_rcpts VALUES (?, ?, ?)", (event_id, rcpt, t))
        db.execute(
            "INSERT INTO events_fts (rowid, subject) VALUES (?, ?)", (cursor.lastrowid, subject)
        )
        if n % 200 == 0:
            label = rng.choice(["spam", "ham"])
            db.execute("INSERT INTO labels (event_id, label, source, author, note, time)"
                       " VALUES (?, ?, 'bench', 'bench', '', ?)", (event_id, label, t))  # fmt: skip
    db.execute("COMMIT")
    db.execute("ANALYZE")


def timed(run, repeat: int = 5) -> list[float]:
    values = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        values.append((time.perf_counter() - started) * 1000)
    return values


def main(count: int) -> None:
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "events.sqlite3")
        started = time.perf_counter()
        fill(store, count, now)
        print(f"filled {count:,} events in {time.perf_counter() - started:.0f} s")
        filters = {
            "no filter (newest 50)": EventFilter(kind="message", limit=51),
            "last 24 h": EventFilter(kind="message", since=now - 86400, limit=51),
            "action = reject": EventFilter(kind="message", action="reject", limit=51),
            "sender": EventFilter(kind="message", sender="user42@domain7.example", limit=51),
            "recipient": EventFilter(kind="message", recipient="person7@corp.example", limit=51),
            "client ip": EventFilter(kind="message", client_ip="198.51.100.7", limit=51),
            "symbol = DMARC_FAIL": EventFilter(kind="message", symbol="DMARC_FAIL", limit=51),
            "subject words": EventFilter(kind="message", text="urgent invoice", limit=51),
            "label = spam": EventFilter(kind="message", label="spam", limit=51),
            "page 100 (keyset cursor)": EventFilter(
                kind="message", before=(now - 86400 * 3, "z"), limit=51
            ),
        }
        rows = []
        for name, where in filters.items():
            values = timed(lambda w=where: store.list(w))
            rows.append([name, len(store.list(where)), percentile(values, 50), max(values)])
        settings = Settings(store=StoreConfig(path=Path(tmp)), rules={"enabled": False})
        values = timed(lambda: overview.summary(store, settings, now), repeat=3)
        rows.append(["overview page queries", "-", percentile(values, 50), max(values)])
        store.close()
    print(table(["events page filter", "rows", "p50 ms", "max ms"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    main(parser.parse_args().events)
