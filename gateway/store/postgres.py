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
from gateway.events.schema import SecurityEvent
from gateway.store.base import Cursor, Row, Store, Tx

log = logging.getLogger(__name__)

# Each migration runs once, in order, in its own transaction. Never edit one that shipped:
# add the next.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    action TEXT NOT NULL,
    score DOUBLE PRECISION,
    subject TEXT NOT NULL,
    message_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_sender ON events (mail_from, time);
CREATE INDEX events_action ON events (action, time);
CREATE INDEX events_message_id ON events (message_id);
CREATE INDEX events_client_ip ON events (client_ip, time);
CREATE INDEX events_kind ON events (kind, time);
CREATE INDEX events_subject ON events USING gin (to_tsvector('simple', subject));
CREATE TABLE event_rcpts (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL
);
CREATE INDEX event_rcpts_rcpt ON event_rcpts (rcpt, time);
CREATE INDEX event_rcpts_event ON event_rcpts (event_id);
CREATE TABLE event_symbols (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    symbol TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    time DOUBLE PRECISION NOT NULL
);
CREATE INDEX event_symbols_lookup ON event_symbols (symbol, time, event_id);
CREATE INDEX event_symbols_event ON event_symbols (event_id);
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
CREATE TABLE retained (
    event_id TEXT PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    time DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    raw BYTEA,
    features BYTEA,
    feature_version INTEGER
);
CREATE INDEX retained_expires ON retained (expires);
CREATE TABLE labels (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
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


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The common SQL's ``?`` placeholders as psycopg's ``%s`` (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


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

    def schema_version(self) -> int:
        """The newest migration applied (0: none)."""
        if not self.query("SELECT to_regclass('schema_migrations') IS NOT NULL AS t")[0]["t"]:
            return 0
        return int(
            self.query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")[0]["v"]
        )

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, each in its own transaction; which ran."""
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
