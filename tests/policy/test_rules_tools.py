"""Rule tools on a real store: replay, stats, lint and test commands, reload through SIGHUP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiosmtplib
import pytest

from gateway.cli import main
from tests.conftest import message, running_gateway

RULES = Path(__file__).resolve().parents[1] / "data" / "rules"


async def send(port, subject):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        await client.sendmail("a@sender.test", ["bob@example.test"], message(subject=subject))


@pytest.fixture
async def history(sink, config_factory):
    """A store with six messages decided by the old rules, all retained, two labelled."""
    config = config_factory(
        sink.port,
        rules={"enabled": True, "paths": [str(RULES / "replay_old")]},
        store={"retain_sample_rate": 1.0},
    )
    async with running_gateway(config) as gw:
        for subject in ("hello", "lottery win", "your invoice", "invoice overdue", "lunch", "news"):
            await send(gw.port, subject)
        events = {e.subject: e for e in gw.events(kind="message")}
        gw.gateway.store.add_label(events["your invoice"].id, "ham", "console", "ana")
        gw.gateway.store.add_label(events["lottery win"].id, "spam", "console", "ana")
        assert events["lottery win"].action == "tag"
        assert events["lottery win"].versions["rules"]
    return config


def test_replay_shows_what_a_candidate_would_change(history, capsys):
    assert (
        main(["rules", "replay", "--config", str(history), str(RULES / "replay_new"), "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == 6
    assert report["changed"] == 2
    assert report["directions"] == {"accept -> reject": 2}
    assert report["rules_in_changes"] == {"R_INVOICE_REJECT": 2}
    assert report["labelled"] == 2
    assert report["false_positives"] == {"before": 0, "after": 1}  # the labelled invoice was ham
    assert report["false_negatives"] == {"before": 0, "after": 0}
    assert report["messages_per_second"] > 0
    # The same rule set as in service changes nothing.
    assert (
        main(["rules", "replay", "--config", str(history), str(RULES / "replay_old"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["changed"] == 0
    assert main(["rules", "replay", "--config", str(history), str(RULES / "replay_new")]) == 0
    assert "verdicts that change: 2" in capsys.readouterr().out


def test_stats(history, tmp_path, capsys):
    config = history.read_text().replace(str(RULES / "replay_old"), str(RULES / "replay_new"))
    history.write_text(config)
    assert main(["rules", "stats", "--config", str(history), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rules"] == {"R_LOTTERY": 1, "R_INVOICE_REJECT": 0}
    assert stats["never_fired"] == ["R_INVOICE_REJECT"]
    assert stats["fired_on_ham"] == {}
    assert main(["rules", "stats", "--config", str(history)]) == 0
    assert "never fired: R_INVOICE_REJECT" in capsys.readouterr().out


def test_lint_and_schema_commands(capsys):
    assert main(["rules", "lint", str(RULES / "basic")]) == 0
    assert "23 rules OK" in capsys.readouterr().out
    assert main(["rules", "lint", str(RULES / "broken")]) == 1
    err = capsys.readouterr().err
    assert "broken.yaml:19: error: unknown symbol 'SPF_FIAL'" in err
    assert main(["rules", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Mailmoat rule file"


def test_rules_test_explains(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[checks.antivirus]\nenabled = false\n[checks.auth]\nenabled = false\n'
                      '[checks.classifier]\nenabled = false\n')  # fmt: skip
    path = tmp_path / "m.eml"
    path.write_bytes(message(subject="wire transfer", body="send gift cards\r\n"))
    assert main(["rules", "test", "--config", str(config), str(RULES / "basic"), str(path)]) == 0
    out = capsys.readouterr().out
    assert "rule T_CHAINED [active] score 3" in out
    assert "because symbol T_SUBJECT" in out
    assert "because subject contains 'wire transfer'" in out
    assert (
        main(["rules", "test", "--config", str(config), str(RULES / "basic"), str(path), "--json"])
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in record["rules"]} >= {"T_SUBJECT", "T_BODY", "T_CHAINED"}


async def test_reload_with_a_broken_rule_file_keeps_the_old_rules(sink, config_factory, tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "a.yaml").write_text((RULES / "replay_old" / "rules.yaml").read_text())
    config = config_factory(sink.port, rules={"enabled": True, "paths": [str(rules_dir)]})
    async with running_gateway(config) as gw:
        version = gw.gateway.versions["rules"]
        (rules_dir / "a.yaml").write_text("rules:\n  - name: broken\n")
        assert not await gw.gateway.reload()
        assert gw.gateway.versions["rules"] == version
        [failed] = gw.events(kind="reload_failed")
        assert "a.yaml:2" in failed.reason
        await send(gw.port, "lottery again")  # old rules still in service
        [event] = [e for e in gw.events(kind="message")]
        assert "R_LOTTERY" in {s["name"] for s in event.symbols}
        (rules_dir / "a.yaml").write_text((RULES / "replay_new" / "rules.yaml").read_text())
        assert await gw.gateway.reload()
        assert gw.gateway.versions["rules"] != version


def test_rules_reload_command_signals_the_running_gateway(tmp_path, capsys):
    received = []
    previous = signal.signal(signal.SIGHUP, lambda *_: received.append(True))
    try:
        pid_file = tmp_path / "mailmoat.pid"
        pid_file.write_text(f"{os.getpid()}\n")
        config = tmp_path / "c.toml"
        config.write_text(
            f'[server]\npid_file = "{pid_file}"\n[rules]\npaths = ["{RULES / "basic"}"]\n'
        )
        assert main(["rules", "reload", "--config", str(config)]) == 0
        assert received == [True]
        pid_file.unlink()
        assert main(["rules", "reload", "--config", str(config)]) == 1
        broken = tmp_path / "b.toml"
        broken.write_text(f'[rules]\npaths = ["{RULES / "broken"}"]\n')
        assert main(["rules", "reload", "--config", str(broken)]) == 2  # refused before signalling
        assert received == [True]
    finally:
        signal.signal(signal.SIGHUP, previous)


ATTACHMENT_RULES = """\
rules:
  - name: R_ZIP_TRUE_TYPE
    description: hold every zip (its true type, whatever its name)
    owner: tests
    mode: active
    when: {attachment_true_type: {contains: zip}}
    least: quarantine
  - name: R_BIN_IN_ARCHIVE
    description: refuse a .bin inside an archive
    owner: tests
    mode: active
    when: {archive_member: {ends_with: .bin}}
    action: reject
"""


def with_zip(subject: str, member: str) -> bytes:
    import email.policy
    import email.utils
    import io
    import zipfile
    from email.message import EmailMessage

    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr(member, b"quarterly figures, as agreed\n" * 20)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@sender.test", "bob@example.test", subject
    mail["Date"] = email.utils.formatdate()
    mail["Message-ID"] = email.utils.make_msgid(domain="sender.test")
    mail.set_content("See the attachment.")
    mail.add_attachment(payload.getvalue(), maintype="application", subtype="zip",
                        filename="scan.zip")  # fmt: skip
    return mail.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
async def zip_history(sink, config_factory):
    """Three messages in the store, two with a zip attached (one holding a .bin)."""
    rules = {"enabled": True, "paths": [str(RULES / "replay_old")]}
    config = config_factory(sink.port, rules=rules, store={"retain_sample_rate": 1.0})
    async with (
        running_gateway(config) as gw,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10) as client,
    ):
        for subject, member in (("scan one", "notes.txt"), ("scan two", "payload.bin")):
            await client.sendmail("a@sender.test", ["bob@example.test"], with_zip(subject, member))
        await client.sendmail("a@sender.test", ["bob@example.test"], message(subject="plain"))
    return config


def test_replay_sees_attachment_true_types_and_archive_members(zip_history, tmp_path, capsys):
    """Rules on what only the content check knows match in replay as at the gateway."""
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "rules.yaml").write_text(ATTACHMENT_RULES)
    assert main(["rules", "replay", "--config", str(zip_history), str(candidate), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == 3, report
    # Both zips are held by their true type; the one with a .bin inside is refused.
    assert report["directions"] == {"accept -> quarantine": 1, "accept -> reject": 1}, report
    assert report["rules_in_changes"] == {"R_ZIP_TRUE_TYPE": 2, "R_BIN_IN_ARCHIVE": 1}
    changed = {e["subject"]: e["after"] for e in report["examples"]}
    assert changed == {"scan one": "quarantine", "scan two": "reject"}
