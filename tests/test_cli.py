"""The mailmoat command: scan output format, config check, events and quarantine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.events import SecurityEvent
from gateway.quarantine import Quarantine
from gateway.store import SqliteStore
from tests.checks.golden import MESSAGES
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scan_config(tmp_path, clamd):
    return write_config(
        tmp_path / "scan.toml",
        {
            "antivirus": {"address": clamd.address},
            "checks.auth": {"enabled": False},
            "checks.classifier": {"enabled": False},
            "rules": {"enabled": False},
        },
    )


def test_scan_json_format_is_stable(capsys, scan_config):
    args = ["scan", "--json", "--config", str(scan_config), "--mail-from", "a@sender.test"]
    assert main([*args, str(MESSAGES)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_file = {Path(r["file"]).name: r for r in lines}
    assert "clean.eml" in by_file
    record = by_file["missing-headers.eml"]
    assert set(record) == {"file", "action", "score", "reason", "symbols", "timings_ms"}
    assert record["action"] == "tag"
    assert record["score"] == 5.0
    assert {"name", "score", "details"} <= set(record["symbols"][0])
    assert {"parse", "protocol", "headers", "antivirus"} <= set(record["timings_ms"])
    assert "AV_CLEAN" in {s["name"] for s in record["symbols"]}


def test_scan_strips_mbox_from_line_and_prints_text(tmp_path, capsys, scan_config):
    path = tmp_path / "one.eml"
    path.write_bytes(
        b"From someone@x Sat Jan  1 00:00:00 2002\n" + (MESSAGES / "clean.eml").read_bytes()
    )
    assert main(["scan", "-c", str(scan_config), "--mail-from", "a@sender.test", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: accept score=0" in out
    assert "timings:" in out


def test_scan_reports_unreadable_files(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "missing.eml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_config_check_reads_the_recipient_map(tmp_path, capsys):
    recipients = tmp_path / "recipients"
    recipients.write_text("bob@example.org\n@lists.example.org\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[backend]\nkind = "smtp"\n[server]\nrecipient_map = "{recipients}"\n')
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "accepts  1 addresses, 1 whole domains" in capsys.readouterr().out
    recipients.write_text("bob@example.org\nlists.example.org\n")
    assert main(["config", "check", "--config", str(config)]) == 2
    assert "recipients:2: 'lists.example.org' is neither" in capsys.readouterr().err


def test_config_check_ok_and_error(tmp_path, capsys):
    assert (
        main(["config", "check", "--config", str(ROOT / "config" / "mailmoat.example.toml")]) == 0
    )
    assert (
        "checks   protocol, headers, antivirus, content, heuristics, auth, bulk, classifier"
        in capsys.readouterr().out
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_connections = -3\n")
    assert main(["config", "check", "--config", str(bad)]) == 2
    assert "server.max_connections" in capsys.readouterr().err


@pytest.fixture
def store_config(tmp_path):
    config = write_config(
        tmp_path / "c.toml",
        {
            "store": {"path": str(tmp_path / "store")},
            "backend": {"kind": "maildir", "path": str(tmp_path / "maildir")},
        },
    )
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    store.add(
        SecurityEvent(
            id="0000000000000001.1",
            kind="message",
            action="reject",
            mail_from="eve@evil.test",
            subject="Win",
            symbols=({"name": "HDR_MISSING_FROM", "score": 3.0, "details": {}},),
        )
    )
    store.add(
        SecurityEvent(
            id="0000000000000002.1",
            kind="message",
            action="accept",
            mail_from="alice@sender.test",
            subject="Lunch",
        )
    )
    Quarantine(tmp_path / "store" / "quarantine", store).hold(
        "0000000000000003.1",
        "q@sender.test",
        ("bob@example.test",),
        "Held",
        11.0,
        "score 11",
        b"Subject: Held\r\n\r\nbody\r\n",
    )
    store.close()
    return config


def test_events_list_and_show(store_config, capsys):
    assert main(["events", "list", "--config", str(store_config), "--action", "reject"]) == 0
    out = capsys.readouterr().out
    assert "0000000000000001.1" in out
    assert "0000000000000002.1" not in out
    assert (
        main(
            [
                "events",
                "list",
                "--config",
                str(store_config),
                "--json",
                "--symbol",
                "HDR_MISSING_FROM",
            ]
        )
        == 0
    )
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["subject"] == "Win"
    assert main(["events", "show", "--config", str(store_config), "0000000000000001.1"]) == 0
    out = capsys.readouterr().out
    assert "HDR_MISSING_FROM" in out
    assert "eve@evil.test" in out
    assert main(["events", "show", "--config", str(store_config), "../../etc/passwd"]) == 1
    assert "invalid id" in capsys.readouterr().err
    assert main(["events", "list", "--config", str(store_config), "--since", "soon"]) == 2


def test_quarantine_commands(store_config, tmp_path, capsys):
    cfg = str(store_config)
    assert main(["quarantine", "list", "--config", cfg]) == 0
    assert "0000000000000003.1" in capsys.readouterr().out
    assert main(["quarantine", "show", "--config", cfg, "0000000000000003.1"]) == 0
    assert json.loads(capsys.readouterr().out)["subject"] == "Held"
    assert main(["quarantine", "release", "--config", cfg, "0000000000000003.1"]) == 0
    assert "released" in capsys.readouterr().out
    [delivered] = (tmp_path / "maildir" / "bob@example.test" / "new").iterdir()
    assert b"Subject: Held" in delivered.read_bytes()
    assert main(["quarantine", "release", "--config", cfg, "0000000000000003.1"]) == 1
    assert "released, not held" in capsys.readouterr().err
    assert main(["quarantine", "list", "--config", cfg, "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "released"
    assert main(["events", "list", "--config", cfg, "--kind", "quarantine_release"]) == 0
    assert "release" in capsys.readouterr().out


def test_quarantine_delete(store_config, capsys):
    cfg = str(store_config)
    assert main(["quarantine", "delete", "--config", cfg, "0000000000000003.1"]) == 0
    assert capsys.readouterr().out == "deleted 0000000000000003.1\n"
    assert main(["quarantine", "list", "--config", cfg]) == 0
    assert capsys.readouterr().out == ""


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.startswith("mailmoat ")


def test_log_level_asked_for_is_kept_and_serve_defaults_to_its_events():
    from gateway.cli import log_level

    assert log_level("serve", None) == "INFO"
    assert log_level("serve", "WARNING") == "WARNING"  # was raised to INFO regardless
    assert log_level("events", None) == "WARNING"
    assert log_level("scan", "DEBUG") == "DEBUG"


def test_output_cut_short_by_a_pipe_exits_quietly():
    """`mailmoat ... | head`: the reader goes away; no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "rules", "schema"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    proc.stdout.close()  # closed long before the command (a second to start) writes
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert b"Traceback" not in stderr


def test_a_port_in_use_is_one_clear_line(tmp_path):
    """The operator reads what is wrong, not a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nmetrics_listen = ""\n'
            f'pid_file = "{tmp_path / "pid"}"\n[store]\npath = "{tmp_path / "store"}"\n'
            "[checks.antivirus]\nenabled = false\n[checks.classifier]\nenabled = false\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"mailmoat: server.listen: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr


def test_scan_reads_an_ordinary_eml_as_smtp_would_deliver_it(tmp_path, capsys):
    """Unix line ends in a file are not bare LFs on the wire: no PROTO_BARE_LF for them."""
    unix = tmp_path / "unix.eml"
    unix.write_bytes(b"From: a@sender.test\nTo: b@example.test\nSubject: hi\n\nHello.\n")
    smuggled = tmp_path / "smuggled.eml"
    smuggled.write_bytes(b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\n.\nMAIL FROM:<x>\r\n")
    assert main(["scan", "--json", str(unix), str(smuggled)]) == 0
    results = {
        json.loads(line)["file"]: json.loads(line) for line in capsys.readouterr().out.splitlines()
    }
    names = {path: {s["name"] for s in r["symbols"]} for path, r in results.items()}
    assert "PROTO_BARE_LF" not in names[str(unix)]
    assert "PROTO_BARE_LF" in names[str(smuggled)]  # mixed: the bare LFs are real


def test_label_many_events_in_one_process(tmp_path, monkeypatch, capsys):
    """An analyst labels a whole query's worth of events at once: `events list --json | label -`."""
    import io

    from gateway.events import SecurityEvent
    from gateway.store import SqliteStore

    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "store"}"\n')
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    ids = [f"{n:016x}.1" for n in range(1, 201)]
    for event_id in ids:
        store.add(SecurityEvent(id=event_id, kind="message", subject="win a prize"))
    store.close()
    assert main(["events", "list", "--config", str(config), "--json", "--limit", "500"]) == 0
    listing = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(listing + "ffffffffffffffff.1\n"))
    assert main(["label", "--config", str(config), "-", "spam", "--by", "ana"]) == 1
    out = capsys.readouterr()
    assert "labelled 200 event(s) spam; 1 skipped" in out.out
    assert "ffffffffffffffff.1" in out.err
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    assert {store.current_label(i).label for i in ids} == {"spam"}
    store.close()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(ids[:3]) + "\n"))  # bare ids
    assert main(["label", "--config", str(config), "-", "ham"]) == 0
