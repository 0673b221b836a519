"""The gateway on PostgreSQL: what it decides is in the database; a database that goes away
defers mail, and one that comes back is used again by itself.

Real parts: Debian's PostgreSQL started by the tests, a gateway on loopback, a real sink.
"""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from gateway.events import EventFilter
from gateway.store.postgres import PostgresStore
from tests.conftest import hold_rules, message, running_gateway, send_message


def pg_config(config_factory, sink, url, tmp_path):
    rules = hold_rules(tmp_path / "rules")
    return config_factory(sink.port, store={"path": str(tmp_path / "shared"), "url": url,
                                            "timeout": 1.0},
                          rules={"enabled": True, "paths": [str(rules)]})  # fmt: skip


async def test_events_and_the_quarantine_index_go_to_postgres(
    sink, config_factory, postgres_url, tmp_path
):
    config = pg_config(config_factory, sink, postgres_url, tmp_path)
    async with running_gateway(config) as gw:
        assert (await send_message(gw.port, message(subject="plain"))).code == 250
        assert (await send_message(gw.port, message(subject="hold me"))).code == 250
        held_id = gw.events(action="quarantine")[0].id
        assert gw.gateway.quarantine.read(held_id).count(b"hold me") == 1
    store = PostgresStore(postgres_url)
    try:
        events = store.list(EventFilter(kind="message", limit=10))
        assert [e.subject for e in events] == ["hold me", "plain"]
        assert store.held(held_id).status == "held"
        assert store.retained(held_id).raw is not None  # every quarantined message is kept
    finally:
        store.close()
    [delivered] = sink.messages
    assert b"Subject: plain" in delivered.data


async def test_a_database_that_goes_away_defers_mail_and_is_used_again_when_back(
    sink, config_factory, postgres_url, postgres_server, tmp_path
):
    config = pg_config(config_factory, sink, postgres_url, tmp_path)
    async with running_gateway(config) as gw:
        assert (await send_message(gw.port, message(subject="before"))).code == 250
        postgres_server.stop()
        try:
            # The first message after the database went: delivered (the store has it), its
            # event only in the process log, and the failure is now known ...
            await send_message(gw.port, message(subject="while down, first"))
            # ... so the next ones are deferred until the database answers again.
            with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
                await send_message(gw.port, message(subject="while down"))
            assert deferred.value.code == 451
            assert "4.3.0" in deferred.value.message
            assert "events:" in (await gw.gateway.readiness())["store"]  # /readyz says why
        finally:
            postgres_server.start()
        await asyncio.sleep(1.1)  # the next probe
        assert (await send_message(gw.port, message(subject="after"))).code == 250
        subjects = [e.subject for e in gw.events(kind="message")]
    assert subjects[0] == "after"
    assert "before" in subjects
    assert "while down" not in [m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
                                for m in sink.messages]  # fmt: skip


def test_a_schema_behind_the_code_is_refused_with_what_to_run(postgres_server):
    url = postgres_server.new_database()  # never migrated
    with pytest.raises(Exception, match="run `mailmoat store migrate`"):
        PostgresStore(url)
