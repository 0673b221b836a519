"""A mailbox owner's "always allow": kept in the store, read by the gateway, trusted on proof.

Real parts: a gateway on loopback relaying to a real sink, a real DNS server on loopback
serving the sender's SPF, DKIM key and DMARC policy, a real SQLite store.
"""

from __future__ import annotations

import shutil

import aiosmtplib
import pytest

from gateway.allows import SenderAllows
from gateway.config import PROJECT_ROOT
from gateway.store import MAX_ALLOWS, SqliteStore
from tests import authdata
from tests.conftest import running_gateway

HOLD_ALL = """\
rules:
  - name: TEST_HOLD_ALL
    description: a score that holds these messages, so that only an allow delivers it
    owner: test
    mode: active
    when:
      subject: {contains: "weekly"}
    score: 11
"""


def rules_dir(tmp_path):
    rules = tmp_path / "rules"
    (rules / "lists").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "rules" / "allow-deny.yaml", rules)
    for name in ("allow_senders", "deny_senders", "deny_ips"):
        (rules / "lists" / f"{name}.txt").write_text("")
    (rules / "hold.yaml").write_text(HOLD_ALL)
    return rules


async def send(port, raw, rcpts, mail_from="alice@sender.test"):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        return await client.sendmail(mail_from, rcpts, raw)


async def test_allowed_sender_is_delivered_only_with_proof_and_for_every_recipient(
    sink, config_factory, dns, keys, tmp_path
):
    config = config_factory(
        sink.port,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        checks__auth={"enabled": True},
        rules={"enabled": True, "paths": [str(rules_dir(tmp_path))]},
    )
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    assert store.allow_sender("Bob@Example.test", "Alice@Sender.test", "bob@example.test")
    store.close()
    signed = authdata.sign_rsa(authdata.message(subject="weekly news"), keys)
    forged = authdata.message(subject="weekly news, forged")
    async with running_gateway(config) as gw:
        # DKIM aligned with the From domain proves alice: delivered for bob.
        await send(gw.port, signed, ["bob@example.test"])
        # Unsigned from loopback (not in sender.test's SPF): a claim, not proof.
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:  # sender.test: p=reject
            await send(gw.port, forged, ["bob@example.test"])
        assert refused.value.code == 554
        # carol allows nobody: the message held for both is held.
        await send(gw.port, signed, ["bob@example.test", "carol@example.test"])
        proven, claimed, shared = sorted(gw.events(kind="message"), key=lambda e: e.time)
    assert "USER_ALLOW_SENDER" in {s["name"] for s in proven.symbols}
    assert proven.action == "accept"
    assert "USER_ALLOW_SENDER" not in {s["name"] for s in claimed.symbols}
    assert claimed.action == "reject"
    assert "USER_ALLOW_SENDER" not in {s["name"] for s in shared.symbols}
    assert shared.action == "quarantine"
    [delivered] = await sink.wait_for(1)
    assert delivered.rcpts == ["bob@example.test"]


async def test_a_new_allow_reaches_the_gateway_without_a_restart(tmp_path):
    store = SqliteStore(tmp_path / "events.sqlite3")
    allows = SenderAllows(store, refresh=0.0)
    assert allows.common(["bob@example.test"]) == frozenset()
    store.allow_sender("bob@example.test", "alice@sender.test", "bob@example.test")
    store.allow_sender("carol@example.test", "dan@sender.test", "carol@example.test")
    allows.common(["bob@example.test"])  # stale: starts a reload off the event loop
    assert allows.snapshot.task is not None
    await allows.snapshot.task
    assert allows.common(["BOB@example.test"]) == {"alice@sender.test"}
    assert allows.common(["bob@example.test", "carol@example.test"]) == frozenset()
    store.close()


def test_allows_per_recipient_are_bounded(tmp_path):
    store = SqliteStore(tmp_path / "events.sqlite3")
    for n in range(MAX_ALLOWS):
        assert store.allow_sender("bob@example.test", f"s{n}@sender.test", "bob")
    assert not store.allow_sender("bob@example.test", "one-more@sender.test", "bob")
    store.forget_sender("bob@example.test", "s0@sender.test")
    assert store.allow_sender("bob@example.test", "one-more@sender.test", "bob")
    store.close()


def test_sender_allows_outlive_a_store_failure(tmp_path):
    """A store that cannot be read keeps the last snapshot (the gateway goes on)."""
    store = SqliteStore(tmp_path / "events.sqlite3")
    store.allow_sender("bob@example.test", "alice@sender.test", "bob")
    allows = SenderAllows(store)
    store.close()
    allows.snapshot.reload()  # the connection is closed: a StoreError, logged
    assert allows.snapshot.value == {"bob@example.test": {"alice@sender.test"}}
