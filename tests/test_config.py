"""Configuration: file + environment, errors that name the key."""

from __future__ import annotations

import pytest

from gateway.config import load_scores, load_settings, parse_hostport
from gateway.errors import ConfigError
from gateway.types import Action


def test_embedded_defaults():
    settings = load_settings(None)
    assert settings.server.listen_address == ("127.0.0.1", 10025)
    assert settings.backend.kind == "maildir"
    assert str(settings.store.database) == "var/store/events.sqlite3"
    assert settings.policy.tag < settings.policy.quarantine < settings.policy.reject


def test_file_and_environment_with_env_winning(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:2525"\nmax_recipients = 7\n'
        '[policy]\nforce = { VIRUS_FOUND = "reject" }\n'
    )
    monkeypatch.setenv("MAILMOAT_SERVER__LISTEN", "[::1]:2626")
    monkeypatch.setenv("MAILMOAT_BACKEND__KIND", "smtp")
    monkeypatch.setenv("MAILMOAT_SERVER__ACCEPT_DOMAINS", '["example.org"]')
    monkeypatch.setenv("MAILMOAT_ANTIVIRUS__ADDRESS", "127.0.0.1:3310")
    settings = load_settings(path)
    assert settings.server.listen_address == ("::1", 2626)
    assert settings.server.max_recipients == 7
    assert settings.backend.kind == "smtp"
    assert settings.antivirus.address == "127.0.0.1:3310"
    assert settings.policy.force == {"VIRUS_FOUND": Action.REJECT}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nmax_recipients = 0\n", "server.max_recipients"),
        ("[server]\nlisten = 'nope'\n", "server.listen"),
        ("[server]\nlisen = '127.0.0.1:25'\n", "server.lisen"),
        ("[backend]\nkind = 'pop3'\n", "backend: Input tag 'pop3' found using 'kind'"),
        ("[policy]\nforce = { lower = 'reject' }\n", "policy.force"),
        ("[policy]\nforce = { X = 'explode' }\n", "policy.force.X"),
        ("[policy]\ntag = 20\n", "tag <= quarantine <= reject"),
        ("[server]\ntls_cert = 'a.pem'\n", "tls_cert and server.tls_key"),
        ("[server]\nlisten = 'mail.example.org:25'\n", "is not an IP address"),
        ("[server\n", "TOML syntax error"),
        ("[antivirus]\naddress = 'unix:'\n", "antivirus.address"),
        ("[antivirus]\naddress = 'h:99999'\n", "antivirus.address"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert needle in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml")


def test_toml_error_has_line_number(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:25"\nmax_recipients = = 3\n')
    with pytest.raises(ConfigError, match=r"line 3"):
        load_settings(path)


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:25", None, ("127.0.0.1", 25)),
        ("[::1]:10025", None, ("::1", 10025)),
        ("127.0.0.1", 53, ("127.0.0.1", 53)),
        ("[::1]", 53, ("::1", 53)),
        ("::1", 53, ("::1", 53)),
    ],
)
def test_parse_hostport(text, default, expected):
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":25", "[::1", "[::1]x", "h:99999", "h:abc"])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError, match=r"."):
        parse_hostport(text)


def test_scores_file_errors(tmp_path):
    path = tmp_path / "scores.toml"
    path.write_text('A = { weight = "high" }\n')
    with pytest.raises(ConfigError, match="A: expected"):
        load_scores(path)
    path.write_text("A = { weight = 1, colour = 2 }\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_scores(path)
    path.write_text("A = { weight = 1, per_log_odds = 2 }\n")
    with pytest.raises(ConfigError, match="A: expected"):
        load_scores(path)
    path.write_text("A = { weight = 1, log_odds_offset = 2 }\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_scores(path)
    path.write_text(
        "A = { weight = 1.5, description = 'x' }\n"
        "ML_SPAM = { per_log_odds = 2, log_odds_offset = -4.5 }\n"
    )
    assert load_scores(path) == {"A": (1.5, "x", False, 0.0), "ML_SPAM": (2.0, "", True, -4.5)}


def test_unknown_check_section_fails_at_build(tmp_path):
    from gateway.pipeline import Pipeline

    path = tmp_path / "c.toml"
    path.write_text("[checks.headers]\nenabled = true\ntimeout = -1\n")
    with pytest.raises(ConfigError, match=r"checks\.headers\.timeout"):
        Pipeline.from_settings(load_settings(path))
    path.write_text("[checks.spelling]\nenabled = true\n")
    with pytest.raises(ConfigError, match="no such check"):
        Pipeline.from_settings(load_settings(path))


def test_shipped_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "config" / "mailmoat.example.toml"
    settings = load_settings(example)
    assert settings.check_section("headers") == {"enabled": True}


def test_an_mta_backend_without_accept_domains_is_refused_as_an_open_relay(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[backend]\nkind = "smtp"\nhost = "127.0.0.1"\nport = 25\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "open relay" in str(refused.value)
    assert "server.accept_domains" in str(refused.value)
    path.write_text(path.read_text() + '[server]\naccept_domains = ["example.org"]\n')
    assert load_settings(path).server.accept_domains == ["example.org"]
    recipients = tmp_path / "recipients"
    recipients.write_text("bob@example.org\n")
    path.write_text(f'[backend]\nkind = "smtp"\n[server]\nrecipient_map = "{recipients}"\n')
    assert load_settings(path).server.recipient_map == recipients
    path.write_text('[backend]\nkind = "smtp"\n[server]\nallow_open_relay = true\n')
    assert load_settings(path).server.allow_open_relay
    # The maildir backend delivers locally: nothing to relay.
    path.write_text('[backend]\nkind = "maildir"\n')
    assert load_settings(path).backend.kind == "maildir"


def test_each_backend_kind_takes_only_its_own_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[backend]\nkind = "maildir"\nhost = "127.0.0.1"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "backend.maildir.host" in str(refused.value)
    path.write_text('[backend]\nkind = "lmtp"\nsocket = "/run/dovecot/lmtp"\n'
                    '[server]\naccept_domains = ["example.org"]\n')  # fmt: skip
    backend = load_settings(path).backend
    assert backend.describe() == "lmtp unix:/run/dovecot/lmtp"
    assert backend.port == 24  # LMTP's own default
