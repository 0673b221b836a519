"""Backup and restore, round trip: everything comes back; a bad archive is refused."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from gateway.config import PROJECT_ROOT
from gateway.events import EventFilter, Retained, SecurityEvent
from gateway.ml.model import CURRENT_FILE, current_model_dir, load_model
from gateway.quarantine import Quarantine
from gateway.store import SqliteStore
from gateway.web.security import hash_password
from tests.cli_helpers import run_cli
from tests.conftest import message, write_config


def site(root: Path, url: str = "") -> Path:
    """A config whose store (or its quarantine, with a PostgreSQL ``url``), rules and
    registry all live under ``root``."""
    rules = root / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules)
    return write_config(root / "mailmoat.toml", {
        "store": {"path": str(root / "store"), "url": url},
        "rules": {"paths": [str(rules)]},
        "checks.classifier": {"models_dir": str(root / "models")},
        "training": {"models_dir": str(root / "models")},
    })  # fmt: skip


def fill(root: Path) -> None:
    store = SqliteStore(root / "store" / "events.sqlite3")
    for n in range(1, 31):
        raw = message(subject=f"event {n}")
        store.add(SecurityEvent(id=f"{n:016x}.1", kind="message", subject=f"event {n}"),
                  Retained(raw, None, None))  # fmt: skip
    store.add_label(f"{3:016x}.1", "spam", "console", "ana")
    store.add_user("ana", hash_password("correct horse battery"), "analyst")
    Quarantine(root / "store" / "quarantine", store).hold(
        f"{5:016x}.1", "a@sender.test", ("bob@example.test",), "held one", 12.0, "score 12",
        message(subject="held one"),
    )  # fmt: skip
    store.close()
    shutil.copytree(PROJECT_ROOT / "models", root / "models")


def test_round_trip_into_an_empty_site(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    fill(old)
    config = site(old)
    code, out, err = run_cli(["backup", "--config", str(config), "--to", str(tmp_path / "b")])
    assert code == 0, err
    [archive] = (tmp_path / "b").glob("mailmoat-backup-*.tar.gz")
    assert f"wrote {archive}" in out
    restored_config = site(new)
    shutil.rmtree(new / "rules")  # restored from the archive, not copied again
    code, out, err = run_cli(["restore", "--config", str(restored_config), str(archive)])
    assert code == 0, err
    store = SqliteStore(new / "store" / "events.sqlite3")
    try:
        assert len(store.list(EventFilter(limit=100, kind="message"))) == 30
        assert store.current_label(f"{3:016x}.1").label == "spam"
        assert store.user("ana")["role"] == "analyst"
        held = Quarantine(new / "store" / "quarantine", store)
        assert b"held one" in held.read(f"{5:016x}.1")
    finally:
        store.close()
    assert (new / "models" / CURRENT_FILE).read_text() == (
        old / "models" / CURRENT_FILE
    ).read_text()
    load_model(current_model_dir(new / "models"))  # the model in service loads (sha256 checked)
    assert (new / "rules" / "allow-deny.yaml").read_bytes() == (
        old / "rules" / "allow-deny.yaml"
    ).read_bytes()
    # Restoring again over the store needs --replace.
    code, _, err = run_cli(["restore", "--config", str(restored_config), str(archive)])
    assert code == 1
    assert "exists" in err


def test_a_corrupt_or_mismatching_archive_is_refused(tmp_path):
    fill(tmp_path)
    config = site(tmp_path)
    assert run_cli(["backup", "--config", str(config), "--to", str(tmp_path / "b")])[0] == 0
    [archive] = (tmp_path / "b").glob("*.tar.gz")
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]

    def rewrite(path: Path, edit) -> Path:
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members:
                data = edit(member.name, data)
                if data is None:
                    continue
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        return path

    def flip_scores(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "config/scores.toml" else data

    flipped = rewrite(tmp_path / "flipped.tar.gz", flip_scores)
    dropped = rewrite(tmp_path / "dropped.tar.gz",
                      lambda n, d: None if n.startswith("models/") else d)  # fmt: skip
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really" * 10)
    (tmp_path / "target").mkdir()
    target = site(tmp_path / "target")
    for bad, said in ((flipped, "config/scores.toml is corrupt"),
                      (dropped, "does not match its manifest"),
                      (garbage, "not a readable backup archive")):  # fmt: skip
        code, _, err = run_cli(["restore", "--config", str(target), str(bad)])
        assert code == 1, bad
        assert said in err
        assert not (tmp_path / "target" / "store").exists()  # nothing written


@pytest.mark.parametrize("missing", ["store"])
def test_nothing_to_back_up_is_said(tmp_path, missing):
    config = write_config(tmp_path / "c.toml", {"store": {"path": str(tmp_path / missing)}})
    code, _, err = run_cli(["backup", "--config", str(config), "--to", str(tmp_path / "b")])
    assert code == 1
    assert "nothing to back up" in err


def test_round_trip_of_the_postgres_store_with_pg_dump(tmp_path, postgres_server, postgres_url):
    """pg_dump into the archive, pg_restore into an empty database: everything comes back."""
    from gateway.store.postgres import PostgresStore

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    store = PostgresStore(postgres_url)
    for n in range(1, 11):
        store.add(SecurityEvent(id=f"{n:016x}.1", kind="message", subject=f"event {n}"),
                  Retained(message(subject=f"event {n}"), None, None))  # fmt: skip
    store.add_label(f"{3:016x}.1", "spam", "console", "ana")
    store.add_user("ana", hash_password("correct horse battery"), "analyst")
    Quarantine(old / "store" / "quarantine", store).hold(
        f"{5:016x}.1", "a@sender.test", ("bob@example.test",), "held one", 12.0, "score 12",
        message(subject="held one"),
    )  # fmt: skip
    store.close()
    shutil.copytree(PROJECT_ROOT / "models", old / "models")
    config = site(old, postgres_url)
    code, _, err = run_cli(["backup", "--config", str(config), "--to", str(tmp_path / "b")])
    assert code == 0, err
    [archive] = (tmp_path / "b").glob("mailmoat-backup-*.tar.gz")
    with tarfile.open(archive) as tar:
        assert "store/postgres.dump" in tar.getnames()
    empty = postgres_server.new_database()  # never migrated: the dump brings the schema
    restored_config = site(new, empty)
    shutil.rmtree(new / "rules")
    code, _, err = run_cli(["restore", "--config", str(restored_config), str(archive)])
    assert code == 0, err
    store = PostgresStore(empty)  # the schema came back at the current version
    try:
        assert len(store.list(EventFilter(limit=100, kind="message"))) == 10
        assert store.current_label(f"{3:016x}.1").label == "spam"
        assert store.user("ana")["role"] == "analyst"
        assert b"held one" in Quarantine(new / "store" / "quarantine", store).read(f"{5:016x}.1")
    finally:
        store.close()
    # Over a database that holds events: only with --replace. Into SQLite: refused.
    code, _, err = run_cli(["restore", "--config", str(restored_config), str(archive)])
    assert code == 1
    assert "holds events" in err
    (tmp_path / "elsewhere").mkdir()
    sqlite_config = site(tmp_path / "elsewhere")
    code, _, err = run_cli(["restore", "--config", str(sqlite_config), str(archive)])
    assert code == 1
    assert "holds a PostgreSQL dump; this config uses the SQLite store" in err
