"""The store: events, labels, users and sessions, links, allowed senders, the quarantine index.

- ``base``: the one interface (``Store``) and every statement common to both engines;
- ``sqlite``: the embedded default, one file for one node;
- ``postgres``: one database for several nodes (``[store] url``).
"""

from __future__ import annotations

from gateway.config import StoreConfig
from gateway.store.base import LABEL_IN_FORCE, MAX_ALLOWS, QuarantineRow, Store
from gateway.store.sqlite import BUSY_TIMEOUT_MS, SqliteStore


def open_store(config: StoreConfig, checkpoint_every: float | None = None) -> Store:
    """The configured store: PostgreSQL when ``[store] url`` is set, else the SQLite file.

    ``checkpoint_every``: for SQLite, WAL checkpoints in a thread of their own (the gateway).
    """
    if config.url:
        from gateway.store.postgres import PostgresStore

        return PostgresStore(config.url, config.pool_size, config.timeout)
    return SqliteStore(config.database, checkpoint_every)


__all__ = [
    "BUSY_TIMEOUT_MS",
    "LABEL_IN_FORCE",
    "MAX_ALLOWS",
    "QuarantineRow",
    "SqliteStore",
    "Store",
    "open_store",
]
