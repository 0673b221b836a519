"""Backup and restore: the store, the quarantine, rules, the model registry, the config.

One timestamped ``.tar.gz`` with a ``MANIFEST.json`` naming every file and its sha256. The
SQLite store (events, labels, users, sessions, the quarantine index) is copied with SQLite's
online backup API, so a gateway may keep writing meanwhile; the PostgreSQL store is dumped
with ``pg_dump`` (one consistent snapshot, while the nodes write) and put back with
``pg_restore``. A restore checks every file
against the manifest first and refuses a corrupt or incomplete archive, or a target that
already holds a store (unless told to replace it), before it writes anything.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from gateway import __version__
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.store.base import redacted

MANIFEST = "MANIFEST.json"
FORMAT = 1


PG_DUMP = "store/postgres.dump"


class BackupError(GatewayError):
    """An archive that cannot be made or must not be restored."""


@dataclass(frozen=True, slots=True)
class Parts:
    """Where each part lives for a given config: archive folder -> path on disk."""

    store: Path
    quarantine: Path
    models: Path
    rules: tuple[Path, ...]
    config: Path | None
    scores: Path

    @classmethod
    def of(cls, settings: Settings, config: Path | None) -> Parts:
        models = settings.check_section("classifier").get("models_dir")
        return cls(
            store=settings.store.database,
            quarantine=settings.store.quarantine_dir,
            models=Path(models) if models else settings.training.models_dir,
            rules=tuple(settings.rules.paths),
            config=config,
            scores=settings.policy.scores_file,
        )

    def folders(self) -> dict[str, Path]:
        """Archive folder -> directory copied whole."""
        found = {"quarantine": self.quarantine, "models": self.models}
        found.update({f"rules/{n}": path for n, path in enumerate(self.rules)})
        return {name: path for name, path in found.items() if path.is_dir()}

    def files(self) -> dict[str, Path]:
        """Archive name -> single file copied."""
        found = {"config/scores.toml": self.scores}
        if self.config is not None:
            found["config/mailmoat.toml"] = self.config
        return {name: path for name, path in found.items() if path.is_file()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def backup(settings: Settings, config: Path | None, to: Path) -> Path:
    """Write ``to/mailmoat-backup-<time>.tar.gz``; return its path."""
    parts = Parts.of(settings, config)
    url = settings.store.url
    if not url and not parts.store.exists():
        raise BackupError(f"no store at {parts.store}: nothing to back up")
    to.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    archive = to / f"mailmoat-backup-{stamp}.tar.gz"
    entries: dict[str, bytes] = {}
    if url:
        entries[PG_DUMP] = _pg_tool("pg_dump", "--format=custom", "--no-owner", f"--dbname={url}")
    else:
        entries["store/events.sqlite3"] = _sqlite_copy(parts.store)
    _collect(parts, entries)
    return _write(archive, parts, entries)


def _pg_tool(name: str, *args: str) -> bytes:
    """Run pg_dump or pg_restore (PostgreSQL's client tools); its output, or BackupError."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)  # fmt: skip
    if found is None:
        raise BackupError(
            f"{name} not found: install PostgreSQL's client tools (postgresql-client)"
        )
    done = subprocess.run([found, *args], capture_output=True, check=False)  # noqa: S603 - PostgreSQL's tool, our arguments
    if done.returncode != 0:
        detail = redacted(done.stderr.decode("utf-8", "replace").strip())[-2000:]
        raise BackupError(f"{name} failed: {detail}")
    return done.stdout


def _pg_holds_events(url: str) -> bool:
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(url, check_schema=False)
    try:
        if store.schema_version() == 0:
            return False
        return bool(store.query("SELECT 1 AS x FROM events LIMIT 1"))
    finally:
        store.close()


def _sqlite_copy(path: Path) -> bytes:
    """A consistent copy of the SQLite store while the gateway writes (online backup)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "events.sqlite3"
        source = sqlite3.connect(path)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)  # consistent while the gateway writes
        finally:
            target.close()
            source.close()
        return copy.read_bytes()


def _collect(parts: Parts, entries: dict[str, bytes]) -> None:
    """The quarantine, models, rules and config files."""
    for folder, path in parts.folders().items():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            entries[f"{folder}/{file.relative_to(path).as_posix()}"] = file.read_bytes()
    for name, path in parts.files().items():
        entries[name] = path.read_bytes()


def _write(archive: Path, parts: Parts, entries: dict[str, bytes]) -> Path:
    """The archive with its manifest, renamed into place once whole."""
    created = time.time()
    manifest = {
        "format": FORMAT,
        "mailmoat": __version__,
        "created": created,
        "rules_dirs": len(parts.rules),
        "files": {name: _sha256(data) for name, data in sorted(entries.items())},
    }
    tmp_archive = archive.with_suffix(".partial")
    with tarfile.open(tmp_archive, "w:gz") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=1).encode()), *entries.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(created)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    tmp_archive.rename(archive)
    return archive


def read_archive(archive: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    """The manifest and every file, checked: refuse anything corrupt, missing or extra."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                path = PurePosixPath(member.name)
                if not member.isfile() or path.is_absolute() or ".." in path.parts:
                    raise BackupError(f"{archive}: unexpected entry {member.name!r}")
                handle = tar.extractfile(member)
                if handle is None:
                    raise BackupError(f"{archive}: unreadable entry {member.name!r}")
                files[member.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive}: not a readable backup archive ({exc})") from exc
    if MANIFEST not in files:
        raise BackupError(f"{archive}: no {MANIFEST}: not a Mailmoat backup")
    manifest = json.loads(files.pop(MANIFEST))
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: backup format {manifest.get('format')} is not {FORMAT}")
    listed: dict[str, str] = manifest["files"]
    if set(listed) != set(files):
        missing, extra = sorted(set(listed) - set(files)), sorted(set(files) - set(listed))
        raise BackupError(f"{archive}: does not match its manifest (missing {missing}, "
                          f"extra {extra})")  # fmt: skip
    for name, digest in listed.items():
        if _sha256(files[name]) != digest:
            raise BackupError(f"{archive}: {name} is corrupt (its sha256 differs)")
    return manifest, files


def restore(
    settings: Settings, config: Path | None, archive: Path, replace: bool
) -> dict[str, int]:
    """Put an archive's parts where ``settings`` keeps them; counts of files per part."""
    manifest, files = read_archive(archive)
    parts = Parts.of(settings, config)
    url = settings.store.url
    if (PG_DUMP in files) != bool(url):
        held, wanted = ("a PostgreSQL dump", "the SQLite store") if url == "" else (
            "an SQLite store", "PostgreSQL ([store] url)")  # fmt: skip
        raise BackupError(f"{archive} holds {held}; this config uses {wanted}")
    if url and _pg_holds_events(url) and not replace:
        raise BackupError(f"{redacted(url)} holds events: restore into an empty database, "
                          "or --replace")  # fmt: skip
    if not url and parts.store.exists() and not replace:
        raise BackupError(f"{parts.store} exists: restore into an empty store, or --replace")
    rules_dirs = int(str(manifest.get("rules_dirs", 0)))
    if rules_dirs > len(parts.rules):
        raise BackupError(f"the archive has {rules_dirs} rules directories, the config names "
                          f"{len(parts.rules)}")  # fmt: skip
    targets = {"store": parts.store.parent, "quarantine": parts.quarantine, "models": parts.models}
    targets.update({f"rules/{n}": path for n, path in enumerate(parts.rules)})
    counts: dict[str, int] = {}
    for name, data in files.items():
        head, _, rest = name.partition("/")
        if head == "rules":
            index, _, rest = rest.partition("/")
            head = f"rules/{index}"
        if head == "config":
            continue  # the config is the operator's to put back (it names these paths)
        if name == PG_DUMP:
            with tempfile.TemporaryDirectory() as scratch:
                dump = Path(scratch) / "postgres.dump"
                dump.write_bytes(data)
                _pg_tool("pg_restore", "--clean", "--if-exists", "--no-owner",
                         "--single-transaction", f"--dbname={url}", str(dump))  # fmt: skip
            counts["store"] = 1
            continue
        target = targets[head] / rest
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and head == "store":
            shutil.copy2(target, target.with_suffix(".before-restore"))
        tmp = target.with_name(f".{target.name}.restore")
        tmp.write_bytes(data)
        tmp.replace(target)
        counts[head] = counts.get(head, 0) + 1
    for stale in ("-wal", "-shm"):  # the restored file is whole; old logs must not replay
        (parts.store.parent / (parts.store.name + stale)).unlink(missing_ok=True)
    return counts
