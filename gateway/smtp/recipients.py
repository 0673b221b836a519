"""The recipient map: the addresses (or whole domains) this gateway takes mail for.

``[server] recipient_map`` names a text file: one address per line (``bob@example.org``), or
``@example.org`` for every address of a domain; ``#`` starts a comment. A recipient not in
it gets ``550 5.1.1`` at RCPT, before any DATA: mail for unknown users is refused while the
client is still there (no backscatter later), and the gateway is no open relay. The file is
read again when it changes (looked at every ``RECHECK`` seconds, off the event loop); a
changed file that no longer reads keeps the last good map, and says so in the log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.snapshot import Snapshot

RECHECK = 10.0  # seconds between looks at the file's modification time


@dataclass(frozen=True, slots=True)
class Recipients:
    """One reading of the map."""

    addresses: frozenset[str]
    domains: frozenset[str]
    mtime_ns: int

    def knows(self, address: str) -> bool:
        address = address.lower()
        return address in self.addresses or address.rpartition("@")[2] in self.domains


def read_map(path: Path) -> Recipients:
    """Parse the map; ConfigError naming file:line for anything that is not an address."""
    try:
        mtime_ns = path.stat().st_mtime_ns
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"server.recipient_map: cannot read {path}: {exc}") from exc
    addresses, domains = set(), set()
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        local, at, domain = entry.rpartition("@")
        if not at or not domain or "@" in local or any(c.isspace() for c in entry):
            raise ConfigError(
                f"{path}:{number}: {entry!r} is neither an address nor @domain "
                "(write bob@example.org, or @example.org for the whole domain)"
            )
        if local:
            addresses.add(entry)
        else:
            domains.add(domain.rstrip("."))
    return Recipients(frozenset(addresses), frozenset(domains), mtime_ns)


class RecipientMap:
    """The map in memory, read again off the event loop when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: Recipients | None = None
        self.snapshot = Snapshot(self._read_if_changed, RECHECK, f"recipient map {path}")

    def _read_if_changed(self) -> Recipients:
        if self.last is not None:
            try:
                unchanged = os.stat(self.path).st_mtime_ns == self.last.mtime_ns
            except OSError as exc:
                raise ConfigError(f"server.recipient_map: cannot read {self.path}: {exc}") from exc
            if unchanged:
                return self.last
        self.last = read_map(self.path)
        return self.last

    def knows(self, address: str) -> bool:
        """On the event loop: from memory."""
        return self.snapshot.current().knows(address)
