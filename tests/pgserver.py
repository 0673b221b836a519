"""Debian's real PostgreSQL server, started by the tests in a private data directory.

initdb as an unprivileged user (``postgres`` when the tests run as root), a loopback port,
its socket in the same directory; each test gets a database of its own, migrated by
``mailmoat store migrate``'s code. ``stop()`` and ``start()`` again stand for a server that
goes away and comes back. Needs the ``postgresql`` package (.ci/run installs it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def available() -> bool:
    return bool(BINARIES) and Path(BINARIES[-1], "postgres").exists()


def _as_owner(command: list[str]) -> list[str]:
    """Run as postgres when we are root (initdb and postgres refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresInstance:
    """A private server: ``start()``, ``stop()``, ``new_database()``."""

    def __init__(self, port: int) -> None:
        self.bin = Path(BINARIES[-1])
        self.root = Path(tempfile.mkdtemp(prefix="mailmoat-pg-", dir="/var/tmp"))
        self.data = self.root / "data"
        self.port = port
        self.count = 0
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "mailmoat",
                       "-A", "trust", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://mailmoat@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresInstance:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        subprocess.run(
            _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                       "-l", str(self.root / "log"), "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self.count += 1
        name = f"t{os.getpid()}_{self.count}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
