"""The shared store: PostgreSQL, for several nodes (``[store] url = "postgresql://..."``).

psycopg 3 with its connection pool: the maintained driver, with a pool that reconnects by
itself, so a node recovers on its own after the server comes back. Every write is a
transaction committed before the caller goes on (PostgreSQL's commit is durable with the
default ``synchronous_commit = on``): the gateway answers 250 only after it. The schema is
versioned (``MIGRATIONS``) and applied by ``mailmoat store migrate``; a node refuses to run
on a schema older than its code, with a message that says so. Quarantined message bytes stay
in files, in ``[store] path``/quarantine: a directory the nodes share (NFS, CephFS...) lets
any node's console release what another node held.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.errors import StoreError
from gateway.events.schema import Retained, SecurityEvent
from gateway.store.base import Cursor, Row, Store, Tx, redacted

log = logging.getLogger(__name__)

# Each migration runs once, in order, in its own transaction. Never edit one that shipped:
# add the next.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema', '1');
-- Events and the rows that hang off them are partitioned by bucket: the event's time, one
-- partition a day (expiry drops whole days), or KEPT for labelled and held events.
CREATE TABLE events (
    id TEXT NOT NULL,
    bucket DOUBLE PRECISION NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    action TEXT NOT NULL,
    score DOUBLE PRECISION,
    subject TEXT NOT NULL,
    message_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_sender ON events (mail_from, time);
CREATE INDEX events_action ON events (action, time);
CREATE INDEX events_message_id ON events (message_id);
CREATE INDEX events_client_ip ON events (client_ip, time);
CREATE INDEX events_kind ON events (kind, time);
CREATE INDEX events_subject ON events USING gin (to_tsvector('simple', subject));
CREATE TABLE event_rcpts (
    event_id TEXT NOT NULL,
    bucket DOUBLE PRECISION NOT NULL,
    rcpt TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL
) PARTITION BY RANGE (bucket);
CREATE INDEX event_rcpts_rcpt ON event_rcpts (rcpt, time);
CREATE INDEX event_rcpts_event ON event_rcpts (event_id);
CREATE TABLE event_symbols (
    event_id TEXT NOT NULL,
    bucket DOUBLE PRECISION NOT NULL,
    symbol TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    time DOUBLE PRECISION NOT NULL
) PARTITION BY RANGE (bucket);
CREATE INDEX event_symbols_lookup ON event_symbols (symbol, time, event_id);
CREATE INDEX event_symbols_event ON event_symbols (event_id);
CREATE TABLE retained (
    event_id TEXT NOT NULL,
    bucket DOUBLE PRECISION NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    raw BYTEA,
    features BYTEA,
    feature_version INTEGER,
    PRIMARY KEY (event_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX retained_expires ON retained (expires);
CREATE TABLE events_kept PARTITION OF events FOR VALUES FROM (1e15) TO (MAXVALUE);
CREATE TABLE event_rcpts_kept PARTITION OF event_rcpts FOR VALUES FROM (1e15) TO (MAXVALUE);
CREATE TABLE event_symbols_kept PARTITION OF event_symbols
    FOR VALUES FROM (1e15) TO (MAXVALUE);
CREATE TABLE retained_kept PARTITION OF retained FOR VALUES FROM (1e15) TO (MAXVALUE);
-- What no day partition takes (a clock far off, an old restore) still goes somewhere.
CREATE TABLE events_other PARTITION OF events DEFAULT;
CREATE TABLE event_rcpts_other PARTITION OF event_rcpts DEFAULT;
CREATE TABLE event_symbols_other PARTITION OF event_symbols DEFAULT;
CREATE TABLE retained_other PARTITION OF retained DEFAULT;
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE used_links (digest TEXT PRIMARY KEY, time DOUBLE PRECISION NOT NULL);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_user ON sessions ("user");
CREATE TABLE quarantine (
    id TEXT PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    mail_from TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    subject TEXT NOT NULL,
    score DOUBLE PRECISION,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_time DOUBLE PRECISION NOT NULL
);
CREATE INDEX quarantine_time ON quarantine (status, time);
CREATE TABLE labels (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    author TEXT NOT NULL,
    note TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    withdrawn DOUBLE PRECISION
);
CREATE INDEX labels_event ON labels (event_id, time);
CREATE TABLE sender_allows (
    rcpt TEXT NOT NULL,
    sender TEXT NOT NULL,
    author TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rcpt, sender)
);
""",
    ),
]
LATEST = MIGRATIONS[-1][0]
LOCK_ID = 0x6D61696C  # the advisory lock two nodes migrating at once take in turn
# The partitioned tables, the bucket of labelled and held events, and how far ahead day
# partitions are made (made again whenever an event comes within AHEAD_DAYS - 1 of the end).
PARTITIONED = ("events", "event_rcpts", "event_symbols", "retained")
KEPT = 1e15
DAY = 86400
AHEAD_DAYS = 7


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The common SQL's ``?`` placeholders as psycopg's ``%s`` (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgTx:
    """A transaction on one pooled connection, taking the common SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_pg(sql), params)


class PostgresStore(Store):
    """Every table in one PostgreSQL database, through a pool of connections."""

    instr = "strpos"
    commits_on_loop = False

    def __init__(
        self, url: str, pool_size: int = 8, timeout: float = 5.0, check_schema: bool = True
    ) -> None:
        self.location = redacted(url)
        self.timeout = timeout
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(timeout))},
        )  # fmt: skip
        # Not waiting: a node starts while PostgreSQL is down (it answers 4xx until back).
        self.pool.open(wait=False)
        self.horizon = 0.0  # day partitions exist up to here (as far as this process knows)
        if check_schema:  # not for `mailmoat store migrate`, which brings it up to date
            self._check_schema()

    def _check_schema(self) -> None:
        """Refuse a schema older than this code; a server down now is the writes' problem."""
        try:
            version = self.schema_version()
        except StoreError as exc:
            log.warning("%s: not reachable now (%s); mail is deferred until it is", self.location,
                        exc)  # fmt: skip
            return
        if version < LATEST:
            self.close()
            raise StoreError(
                f"{self.location}: schema version {version}, this Mailmoat needs {LATEST}: "
                "run `mailmoat store migrate`"
            )
        try:
            self.ensure_partitions(time.time() - DAY, time.time() + AHEAD_DAYS * DAY)
        except StoreError as exc:  # the default partition takes the events meanwhile
            log.warning("%s: day partitions not made (%s)", self.location, exc)

    def ensure_partitions(self, first: float, last: float) -> list[str]:
        """Day partitions (UTC) of every partitioned table from ``first`` to ``last``; the
        days made now. Two nodes making the same day at once is harmless."""
        made = []
        day = int(first // DAY) * DAY
        while day <= last:
            name = time.strftime("p%Y%m%d", time.gmtime(day))
            with self.transaction() as tx:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_ID + 1,))
                exists = tx.execute(
                    "SELECT 1 FROM pg_class WHERE relname = ?", (f"events_{name}",)
                ).fetchone()
                if not exists:
                    for table in PARTITIONED:
                        tx.execute(
                            f"CREATE TABLE {table}_{name} PARTITION OF {table}"
                            f" FOR VALUES FROM ({day}) TO ({day + DAY})"
                        )
                    made.append(name)
            day += DAY
        self.horizon = max(self.horizon, day)
        return made

    def add_many(
        self, items: Sequence[tuple[SecurityEvent, Retained | None]], wait: bool = True
    ) -> None:
        """Events in one transaction, making day partitions ahead when their end is near."""
        newest = max((event.time for event, _ in items), default=0.0)
        if newest > self.horizon - (AHEAD_DAYS - 1) * DAY:
            try:
                self.ensure_partitions(newest - DAY, newest + AHEAD_DAYS * DAY)
            except StoreError as exc:  # the default partition takes them meanwhile
                log.warning("%s: day partitions not made (%s)", self.location, exc)
        super().add_many(items, wait)

    def _bucket(self, event: SecurityEvent) -> tuple[float, ...]:
        # A quarantined message's event must outlive expiry from the start.
        return (KEPT if event.action == "quarantine" else event.time,)

    def _keep(self, tx: Tx, event_id: str) -> None:
        for table, column in (("events", "id"), ("event_rcpts", "event_id"),
                              ("event_symbols", "event_id"), ("retained", "event_id")):  # fmt: skip
            tx.execute(f"UPDATE {table} SET bucket = ? WHERE {column} = ? AND bucket < ?",
                       (KEPT, event_id, KEPT))  # fmt: skip

    def purge(self, now: float | None = None, events_before: float | None = None) -> dict[str, int]:
        """As the other store, but old events go by whole day partitions (dropped), then
        the rows older than ``events_before`` left in its day; labelled and held events are
        in the kept partition and stay."""
        if events_before is None:
            return super().purge(now, None)
        counts = super().purge(now, None)
        dropped = 0
        for name, day in self._day_partitions():
            if day + DAY > events_before:
                continue
            with self.transaction() as tx:
                dropped += tx.execute(f"SELECT count(*) AS n FROM events_{name}").fetchone()["n"]
                for table in PARTITIONED:
                    tx.execute(f"DROP TABLE IF EXISTS {table}_{name}")
        with self.transaction() as tx:
            rows = tx.execute(
                "DELETE FROM events WHERE time < ? AND bucket < ?", (events_before, KEPT)
            ).rowcount
            for table in PARTITIONED[1:]:
                tx.execute(f"DELETE FROM {table} WHERE time < ? AND bucket < ?",
                           (events_before, KEPT))  # fmt: skip
        counts["events"] = int(dropped + rows)
        return counts

    def _day_partitions(self) -> list[tuple[str, float]]:
        """(suffix, start of the day) of the events table's day partitions."""
        rows = self.query(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
        )
        days = []
        for row in rows:
            match = re.fullmatch(r"events_(p\d{8})", row["name"])
            if match:
                day = calendar.timegm(time.strptime(match.group(1), "p%Y%m%d"))
                days.append((match.group(1), float(day)))
        return sorted(days, key=lambda d: d[1])

    def schema_version(self) -> int:
        """The newest migration applied (0: none)."""
        if not self.query("SELECT to_regclass('schema_migrations') IS NOT NULL AS t")[0]["t"]:
            return 0
        return int(
            self.query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")[0]["v"]
        )

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, each in its own transaction, then make the
        day partitions of the coming days; which migrations ran."""
        applied = []
        with self.transaction() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
            )
        for version, sql in MIGRATIONS:
            try:
                with self.pool.connection(timeout=self.timeout) as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                    if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                    (version,)).fetchone():  # fmt: skip
                        continue
                    conn.execute(sql.encode())  # several statements, no parameters
                    conn.execute("INSERT INTO schema_migrations (version, applied)"
                                 " VALUES (%s, %s)", (version, time.time()))  # fmt: skip
            except (psycopg.Error, PoolTimeout) as exc:
                raise StoreError(f"{self.location}: migration {version}: {exc}") from exc
            applied.append(version)
        self.ensure_partitions(time.time() - DAY, time.time() + AHEAD_DAYS * DAY)
        return applied

    @contextmanager
    def transaction(self, durable: bool = False, wait: bool = True) -> Iterator[Tx]:
        """One transaction on a pooled connection; committed (durably) when the block ends.

        ``durable`` and ``wait`` change nothing here: every commit is durable, and writers
        do not lock each other out (only the rows they touch).
        """
        try:
            with self.pool.connection(timeout=self.timeout) as conn, conn.transaction():
                yield PgTx(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{self.location}: {exc}".strip()) from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self.pool.connection(timeout=self.timeout) as conn:
                return conn.execute(_pg(sql), params).fetchall()  # type: ignore[no-any-return]
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{self.location}: {exc}".strip()) from exc

    def _text_match(self, words: list[str]) -> tuple[str, str]:
        # The same expression as the events_subject index, so that the index serves it.
        return ("to_tsvector('simple', e.subject) @@ plainto_tsquery('simple', ?)",
                " ".join(words))  # fmt: skip

    def _index_text(self, tx: Tx, event: SecurityEvent) -> None:
        """Nothing to do: the subject index is maintained by PostgreSQL."""

    def _forget_text(self, tx: Tx, where: str, params: Sequence[Any]) -> None:
        """Nothing to do: the subject index is maintained by PostgreSQL."""

    def _day(self, column: str) -> str:
        return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def _hour_since(self, column: str) -> str:
        return f"CAST(FLOOR(({column} - ?) / 3600) AS INTEGER)"

    def close(self) -> None:
        self.pool.close()
