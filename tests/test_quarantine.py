"""Quarantine storage: durable files, index, status changes, traversal-proof ids."""

from __future__ import annotations

import pytest

from gateway.errors import StoreError, UnknownIdError
from gateway.quarantine import Quarantine
from gateway.store import SqliteStore

QID = "0123456789abcdef.1"


@pytest.fixture
def quarantine(tmp_path):
    store = SqliteStore(tmp_path / "events.sqlite3")
    yield Quarantine(tmp_path / "quarantine", store)
    store.close()


def test_hold_read_release(quarantine, tmp_path):
    quarantine.hold(QID, "a@b.test", ("c@d.test",), "subj", 12.0, "score 12", b"bytes")
    assert (tmp_path / "quarantine" / f"{QID}.eml").read_bytes() == b"bytes"
    assert [e.id for e in quarantine.list()] == [QID]
    assert quarantine.read(QID) == b"bytes"
    quarantine.set_status(QID, "released")
    assert quarantine.list() == []
    assert quarantine.get(QID).status == "released"
    assert not (tmp_path / "quarantine" / f"{QID}.eml").exists()
    with pytest.raises(UnknownIdError, match="released"):
        quarantine.read(QID)
    assert [e.status for e in quarantine.list(status=None)] == ["released"]


@pytest.mark.parametrize("bad", ["../events", "../../etc/passwd", "0123456789abcdef.1/../x"])
def test_traversal_ids_are_refused(quarantine, bad):
    with pytest.raises(UnknownIdError):
        quarantine.path_of(bad)
    with pytest.raises(UnknownIdError):
        quarantine.read(bad)


def test_write_failure_is_a_store_error(quarantine, tmp_path):
    (tmp_path / "quarantine").write_text("not a directory")
    with pytest.raises(StoreError, match="quarantine write failed"):
        quarantine.hold(QID, "a@b.test", ("c@d.test",), "s", 1.0, "r", b"x")
    assert quarantine.list() == []
