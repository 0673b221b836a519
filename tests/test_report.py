"""The daily report from a real store: the day's figures, as HTML, text and a mail."""

from __future__ import annotations

import email
import email.policy
import time

from gateway.events import SecurityEvent
from gateway.store import SqliteStore
from tests.cli_helpers import run_cli
from tests.conftest import write_config


def fill(store: SqliteStore, now: float) -> None:
    actions = ["accept"] * 6 + ["quarantine", "reject", "tempfail"]
    for n in range(90):
        action = actions[n % len(actions)]
        ml = {"name": "ML_SPAM" if action in ("quarantine", "reject") else "ML_HAM",
              "score": 6.0 if action in ("quarantine", "reject") else -1.0,
              "check": "classifier", "status": "fail", "details": {}}  # fmt: skip
        av_fail = {"name": "AV_FAIL", "score": 0.0, "check": "antivirus", "status": "error",
                   "details": {}}  # fmt: skip
        symbols = (ml, av_fail) if action == "tempfail" else (ml,)
        store.add(SecurityEvent(id=f"{n + 1:016x}.1", kind="message", time=now - n * 900,
                                action=action, mail_from=f"user{n % 4}@sender.test",
                                subject=f"m{n}", symbols=symbols))  # fmt: skip
    store.add_label(f"{8:016x}.1", "ham", "console", "ana")  # a quarantined one was ham
    store.add(SecurityEvent(id=f"{200:016x}.1", kind="reload_failed", time=now - 600,
                            reason="rules/x.yaml:3: bad regex"))  # fmt: skip


def test_the_daily_report_says_what_happened(tmp_path):
    now = time.time()
    config = write_config(tmp_path / "c.toml", {
        "store": {"path": str(tmp_path / "store")},
        "backend": {"kind": "maildir", "path": str(tmp_path / "maildir")},
        "antivirus": {"address": f"unix:{tmp_path / 'no-clamd.sock'}"},
        "rules": {"enabled": False},
    })  # fmt: skip
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    fill(store, now)
    store.close()
    out = tmp_path / "report" / "daily.html"
    code, said, err = run_cli(["report", "daily", "--config", str(config), "--out", str(out),
                               "--mail", "shift@example.test"])  # fmt: skip
    assert code == 0, err
    html, text = out.read_text(), out.with_suffix(".txt").read_text()
    assert "<svg" in html  # the verdicts by hour, inline
    assert "<script" not in html
    # 96 quarter-hours in a day: the 90 events all fall in it.
    assert "90 messages: accept 60, tag 0, quarantine 10, reject 10, tempfail 10" in text
    assert "1 false positives (ham held or rejected)" in text
    assert "AV_FAIL 10 (11.11%)" in text
    assert "spam share 22.2% today" in text
    assert "age unknown" in text  # no clamd answering
    assert "rules/x.yaml:3: bad regex" in text
    assert "user0@sender.test" in text
    # The mail went through the backend, with both forms.
    [mailed] = list((tmp_path / "maildir").glob("shift@example.test/new/*"))
    message = email.message_from_bytes(mailed.read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]).strip().startswith("Mailmoat daily report")
    kinds = [part.get_content_type() for part in message.walk()]
    assert {"text/plain", "text/html"} <= set(kinds)
    assert "mailed to shift@example.test" in said
