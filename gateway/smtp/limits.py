"""Connections per client address, counted across every worker of one node.

Workers are separate processes, so a per-process counter let 60 connections from one address
in where the limit was 20 (each worker counted only its own). The counts live in memory
shared by the forked workers: one row per worker (a worker writes only its own row, so no
lock is needed, and a dead worker's row is cleared before it is forked again), and a
client address is counted in two buckets chosen by a keyed hash (a count-min sketch): a
count can be too high only when both of its buckets collide with busy addresses, never too
low, and the memory is fixed whatever the number of addresses.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import secrets

BUCKETS = 1 << 16


class ConnectionCounts:
    """Open connections per client address, summed over the workers sharing this table."""

    def __init__(self, workers: int = 1, buckets: int = BUCKETS) -> None:
        self.workers = workers
        self.buckets = buckets
        # RawArray lives in shared memory inherited by fork; int32 writes do not tear.
        self.table = multiprocessing.RawArray("i", workers * buckets)
        self.key = secrets.token_bytes(16)  # attackers cannot aim at another address's buckets
        self.worker = 0

    def _slots(self, ip: str) -> tuple[int, int]:
        digest = hashlib.blake2b(ip.encode(), key=self.key, digest_size=8).digest()
        return (
            int.from_bytes(digest[:4], "little") % self.buckets,
            int.from_bytes(digest[4:], "little") % self.buckets,
        )

    def count(self, ip: str) -> int:
        """Connections from ``ip`` now open on every worker (never fewer than the truth)."""
        table, buckets = self.table, self.buckets
        return min(
            int(sum(table[w * buckets + slot] for w in range(self.workers)))
            for slot in self._slots(ip)
        )

    def add(self, ip: str, delta: int) -> None:
        """Count a connection opened (+1) or closed (-1) by this process's worker."""
        base = self.worker * self.buckets
        for slot in set(self._slots(ip)):
            self.table[base + slot] += delta

    def clear(self, worker: int) -> None:
        """Forget what a worker counted (it died; its connections died with it)."""
        base = worker * self.buckets
        self.table[base : base + self.buckets] = [0] * self.buckets
