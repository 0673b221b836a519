"""Configuration: one TOML file plus ``MAILMOAT_*`` environment variables, validated at start.

Environment variables override the file; nested keys use ``__``
(``MAILMOAT_SERVER__LISTEN=0.0.0.0:25``). Every model is frozen and rejects unknown
keys, so a typo fails at start with the key's dotted name instead of being ignored.
Relative paths are relative to the working directory of the process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gateway.errors import ConfigError
from gateway.types import Action

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shipped_root() -> Path:
    """Where the shipped scores, starter rules and model are: the source checkout, or, for
    an installed wheel, ``<prefix>/share/mailmoat`` (pyproject.toml's data-files)."""
    if (PROJECT_ROOT / "config" / "scores.toml").is_file() and (PROJECT_ROOT / "rules").is_dir():
        return PROJECT_ROOT
    return Path(sys.prefix) / "share" / "mailmoat"


SHIPPED = shipped_root()
DEFAULT_SCORES = SHIPPED / "config" / "scores.toml"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class FrozenModel(BaseModel):
    """Base of every config section: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` (port optional when a default is given)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {value!r}")
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in {value!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        # No colon, or a bare IPv6 address without brackets: no port given.
        host, port_text = text, ""
    if not host:
        raise ValueError(f"missing host in {value!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {value!r} (expected host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {value!r}")
    return host, int(port_text)


class ServerConfig(FrozenModel):
    """The SMTP front."""

    listen: str = "127.0.0.1:10025"
    hostname: str = ""
    # Worker processes accepting on one shared listening socket; 0: one per CPU core.
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    max_message_size: PositiveInt = 25 * 1024 * 1024
    max_connections: PositiveInt = 200
    max_connections_per_ip: PositiveInt = 20
    max_recipients: PositiveInt = 100
    # Recipient domains this gateway accepts mail for (".example.com" also takes
    # subdomains); others get 550 5.7.1 at RCPT, so the gateway is never an open relay.
    # Empty is allowed only with the local maildir backend, or with allow_open_relay: an SMTP
    # backend that trusts us (Postfix trusts loopback) would otherwise relay anywhere.
    accept_domains: list[str] = Field(default_factory=list)
    # Take recipients of any domain although the backend is an MTA: only where something
    # else already refuses relaying (the backend checks recipients itself, as a store does).
    allow_open_relay: bool = False
    # The valid recipients, one address (or @domain) per line: others get 550 5.1.1 at RCPT
    # (gateway/smtp/recipients.py). With it, accept_domains may stay empty.
    recipient_map: Path | None = None
    # Authenticated submission: "name:argon2-hash" lines (`mailmoat users hash`). Clients
    # that AUTH PLAIN over TLS as one of them may send to any domain; others only to
    # accept_domains. Unset: no AUTH offered (an inbound gateway).
    submission_users: Path | None = None
    max_line_length: Annotated[int, Field(ge=1000)] = 4096
    # Error replies (4xx/5xx, but not 452 for recipients over the limit) without a message
    # taken in between, after which the session is closed with 421: dictionary attacks and
    # probing stop here (Postfix's smtpd_hard_error_limit: 20).
    max_errors: PositiveInt = 20
    # NOOP, VRFY, EXPN and HELP per session: a client cannot hold a slot open with them.
    max_junk_commands: PositiveInt = 100
    command_timeout: PositiveFloat = 300.0
    data_timeout: PositiveFloat = 600.0
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    bare_newline: Literal["normalize", "reject"] = "normalize"
    # Written at start (for `mailmoat rules reload`, service managers), removed at stop.
    pid_file: Path | None = Path("var/mailmoat.pid")
    # /metrics (Prometheus), /healthz and /readyz of the gateway; empty: off.
    metrics_listen: str = "127.0.0.1:9125"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:  # empty: no SMTP front (a milter-only gateway)
            parse_hostport(value)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        """The (host, port) pair to bind."""
        return parse_hostport(self.listen)

    @property
    def worker_count(self) -> int:
        """Workers to start: the configured number, or one per core."""
        return self.workers or os.cpu_count() or 1

    @property
    def identity(self) -> str:
        """Our name: in the greeting, to the backend, and as authserv-id (RFC 8601 2.5)."""
        return self.hostname or socket.getfqdn()


class MilterConfig(FrozenModel):
    """``[milter]``: the milter front for Postfix (smtpd_milters) and Sendmail."""

    # "host:port" or "unix:/path/to/socket"; empty: off.
    listen: str = ""
    # Permissions of a unix socket (the MTA's user must be able to connect).
    socket_mode: str = "0660"
    # What the MTA does with a message Mailmoat quarantined (its copy is already stored):
    # "discard" drops it (SMFIR_DISCARD); "hold" also puts it in the MTA's hold queue.
    quarantine: Literal["discard", "hold"] = "discard"
    # Seconds the MTA may stay silent in the middle of a conversation before we close it.
    idle_timeout: PositiveFloat = 600.0

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value.startswith("unix:"):
            if not value[5:]:
                raise ValueError("empty socket path after 'unix:'")
        elif value:
            parse_hostport(value)
        return value

    @field_validator("socket_mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        if not (value.isdigit() and set(value) <= set("01234567") and len(value) in (3, 4)):
            raise ValueError(f"socket_mode {value!r}: an octal mode such as 0660")
        return value


class _NetworkBackend(FrozenModel):
    """What every backend reached over the network shares."""

    host: str = "127.0.0.1"
    helo: str = ""
    connect_timeout: PositiveFloat = 10.0
    command_timeout: PositiveFloat = 30.0
    # How long the backend may take to answer the end of data. Giving up earlier than the
    # client would (RFC 5321 4.5.3.2.6: 10 minutes) answers 451 while the backend may still
    # deliver, and the retry is a duplicate: 480 s leaves room for the scan within the
    # client's 600 s. A duplicate is the safe side of that race (RFC 5321 6.1), a loss is not.
    data_timeout: PositiveFloat = 480.0


class SmtpBackendConfig(_NetworkBackend):
    """``kind = "smtp"``: a before-queue proxy to an MTA; MAIL and RCPT are mirrored."""

    kind: Literal["smtp"] = "smtp"
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: bool = False
    verify_tls: bool = True
    # Tell the backend who the real client is, so its logs, restrictions and Received
    # header name it instead of us: "xforward" (Postfix: smtpd_authorized_xforward_hosts),
    # "xclient" (smtpd_authorized_xclient_hosts), or "off". Used only if the backend offers it.
    forward_client: Literal["xforward", "xclient", "off"] = "xforward"

    def describe(self) -> str:
        """Where mail goes, for people."""
        return f"smtp {self.host}:{self.port}"


class LmtpBackendConfig(_NetworkBackend):
    """``kind = "lmtp"``: a mail store (Dovecot, Cyrus) at host:port or a unix socket."""

    kind: Literal["lmtp"] = "lmtp"
    port: Annotated[int, Field(ge=1, le=65535)] = 24
    # LMTP over a unix socket instead of host:port (Dovecot: /var/run/dovecot/lmtp).
    socket: Path | None = None

    def describe(self) -> str:
        """Where mail goes, for people."""
        return f"lmtp unix:{self.socket}" if self.socket else f"lmtp {self.host}:{self.port}"


class MaildirBackendConfig(FrozenModel):
    """``kind = "maildir"``: local delivery, one maildir per recipient, fsync'd before 250."""

    kind: Literal["maildir"] = "maildir"
    path: Path = Path("var/maildir")

    def describe(self) -> str:
        """Where mail goes, for people."""
        return f"maildir {self.path}"


# ``[backend]``: one model per kind, chosen by ``kind``; a key of another kind is an error.
BackendConfig = Annotated[
    SmtpBackendConfig | LmtpBackendConfig | MaildirBackendConfig, Field(discriminator="kind")
]


class StoreConfig(FrozenModel):
    """Security events and quarantine."""

    path: Path = Path("var/store")
    # PostgreSQL for several nodes ("postgresql://user@host/db"; a password in the URL or,
    # better, in ~/.pgpass or PGPASSWORD). Empty: the SQLite file under path. Quarantined
    # bytes stay under path/quarantine either way: make it a directory the nodes share.
    url: str = ""
    pool_size: Annotated[int, Field(ge=1, le=100)] = 8
    timeout: PositiveFloat = 5.0
    jsonl: Path | None = None
    # Raw messages kept for retraining and replay (compressed): this fraction of all mail,
    # plus every quarantined one; kept retain_days, forever once labelled. Feature snapshots
    # are kept for every message whose features a check or rule read (the classifier,
    # heuristics, bulk...) and every one kept raw, so labels stay trainable after the raw
    # expires.
    retain_sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    retain_days: PositiveFloat = 30.0
    retain_max_bytes: PositiveInt = 10 * 1024 * 1024

    @property
    def database(self) -> Path:
        """The SQLite file of events and the quarantine index."""
        return self.path / "events.sqlite3"

    @property
    def quarantine_dir(self) -> Path:
        """Where quarantined message bytes live."""
        return self.path / "quarantine"


# Forced actions that hold unless the config says otherwise (SYMBOL = "score").
DEFAULT_FORCE: dict[str, Action] = {
    "VIRUS_FOUND": Action.REJECT,
    "ATTACHMENT_BANNED": Action.QUARANTINE,
    "DMARC_POLICY_REJECT": Action.REJECT,
    "DMARC_POLICY_QUARANTINE": Action.QUARANTINE,
}


class DomainPolicy(FrozenModel):
    """Thresholds for mail to one recipient domain (unset keys: the global ones)."""

    tag: float | None = None
    quarantine: float | None = None
    reject: float | None = None


class RulesConfig(FrozenModel):
    """``[rules]``: the staff rule set."""

    enabled: bool = True
    # Directories (every *.yaml below, lists in lists/*.txt) or single files.
    paths: list[Path] = Field(default_factory=lambda: [SHIPPED / "rules"])


class PolicyConfig(FrozenModel):
    """Score thresholds, forced actions and the scores file."""

    tag: float = 5.0
    quarantine: float = 10.0
    reject: float = 15.0
    scores_file: Path = DEFAULT_SCORES
    # Merged over DEFAULT_FORCE; "score" turns a default off (the symbol only adds its score).
    force: dict[str, Action | Literal["score"]] = Field(default_factory=dict)
    add_headers: bool = True
    # Per recipient domain thresholds; a message to several domains takes the strictest.
    domains: dict[str, DomainPolicy] = Field(default_factory=dict)

    @property
    def forced_actions(self) -> dict[str, Action]:
        """The symbol -> action map in force: defaults, then the file's entries."""
        merged: dict[str, Action | str] = {**DEFAULT_FORCE, **self.force}
        return {k: v for k, v in merged.items() if isinstance(v, Action)}

    @field_validator("force")
    @classmethod
    def _check_force(
        cls, value: dict[str, Action | Literal["score"]]
    ) -> dict[str, Action | Literal["score"]]:
        for symbol in value:
            if not symbol.replace("_", "").isalnum() or symbol.upper() != symbol:
                raise ValueError(f"symbol {symbol!r} must be UPPER_SNAKE")
        return value


class ClamdConfig(FrozenModel):
    """``[antivirus]``: how to reach clamd (the antivirus check's switches are in its section)."""

    address: str = "unix:var/clamav/clamd.sock"
    timeout: PositiveFloat = 30.0
    max_concurrency: PositiveInt = 4
    chunk_size: Annotated[int, Field(ge=1024, le=1 << 22)] = 64 * 1024
    # Match clamd's StreamMaxLength: a bigger message is not sent but gets AV_FAIL, because
    # clamd would only scan its beginning. Never silently passed unscanned.
    max_scan_size: PositiveInt = 26 * 1024 * 1024

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if value.startswith("unix:"):
            if not value[5:]:
                raise ValueError("empty socket path after 'unix:'")
        else:
            parse_hostport(value, 3310)
        return value


class DnsConfig(FrozenModel):
    """``[dns]``: the resolver every DNS-based check uses."""

    # "ip" or "ip:port" / "[v6]:port"; empty means the system's /etc/resolv.conf.
    nameservers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    timeout: PositiveFloat = 3.0
    cache_size: PositiveInt = 10000
    # Seconds a failed lookup (timeout, SERVFAIL, refused) is remembered; 0: never.
    failure_ttl: Annotated[float, Field(ge=0, le=300)] = 10.0

    @field_validator("nameservers", mode="before")
    @classmethod
    def _split_env(cls, value: Any) -> Any:
        # MAILMOAT_DNS__NAMESERVERS may be a JSON list, "a, b", or one address.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _ = parse_hostport(server, 53)
            ipaddress.ip_address(host)
        return value


class TrainingConfig(FrozenModel):
    """``[training]``: the analysts' loop (training/, `mailmoat model ...`)."""

    # The ham false-positive rate the spam threshold is chosen for.
    target_fpr: Annotated[float, Field(gt=0, lt=0.5)] = 0.001
    # The linear SVM's regularisation (higher fits the training data more closely).
    c: PositiveFloat = 1.0
    # The model registry (train, promote, rollback): state, filled from the shipped models.
    models_dir: Path = Path("var/models")
    datasets_dir: Path = Path("var/datasets")
    reports_dir: Path = Path("var/reports")


class WebConfig(FrozenModel):
    """``[web]``: the review console."""

    listen: str = "127.0.0.1:8025"
    # Cookie signing key; empty: generated once into secret_file (mode 0600).
    secret_key: str = ""
    secret_file: Path = Path("var/web-secret")
    # Send the session cookie over HTTPS only: set true behind a TLS-terminating proxy.
    secure_cookies: bool = False
    session_hours: PositiveFloat = 8.0
    # The console's address as mailbox owners reach it: the links in quarantine digests.
    public_url: str = "http://127.0.0.1:8025"
    # How long a digest's release/delete link works (each works once).
    digest_link_hours: PositiveFloat = 72.0
    page_size: Annotated[int, Field(ge=10, le=500)] = 50

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:  # empty: no SMTP front (a milter-only gateway)
            parse_hostport(value)
        return value


class RedisConfig(FrozenModel):
    """``[redis]``: state the nodes of a site share (gateway/shared_state.py)."""

    # "redis://host:6379/0" (or rediss:// for TLS, unix:///path); empty: each worker counts
    # for itself, right for one node.
    url: str = ""
    # Seconds per command; a slower or failed Redis is left alone for ``retry`` seconds while
    # each node counts for itself (fail open: mail is never refused for it).
    timeout: PositiveFloat = 0.25
    retry: PositiveFloat = 10.0
    prefix: str = "mailmoat:"


class Bucket(FrozenModel):
    """A token bucket: ``per_minute`` on average, up to ``burst`` at once."""

    per_minute: PositiveFloat
    burst: PositiveInt


class RateLimitConfig(FrozenModel):
    """``[ratelimit]``: messages per client address, envelope sender, authenticated user (at
    MAIL) and recipients (at RCPT); over it, ``451 4.7.28``. Unset: no limit of that kind."""

    client_ip: Bucket | None = None
    sender: Bucket | None = None
    user: Bucket | None = None
    recipient: Bucket | None = None
    # Clients never limited by address (their senders and recipients still are).
    exempt_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    @field_validator("exempt_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class GreylistConfig(FrozenModel):
    """``[greylist]``: a first message from a (client network, sender, recipient) triplet is
    deferred; a retry after ``delay`` passes, and the triplet passes for ``pass_days``."""

    enabled: bool = False
    delay: Annotated[float, Field(ge=0)] = 300.0
    retry_hours: PositiveFloat = 24.0
    pass_days: PositiveFloat = 35.0
    ipv4_prefix: Annotated[int, Field(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, Field(ge=16, le=128)] = 64
    # Never greylisted: these networks, authenticated clients, and senders proven by an
    # aligned DKIM signature or a DMARC pass (their mail is who it says).
    exempt_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    @field_validator("exempt_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


def _check_networks(value: list[str]) -> list[str]:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a network (write 192.0.2.0/24)") from exc
    return value


class ReportConfig(FrozenModel):
    """``[report]``: what ``mailmoat report daily`` reads beyond the store."""

    # The Prometheus that scrapes this gateway with the shipped alert rules: the report lists
    # the alerts that fired in the day from its ALERTS series. Empty: the report says unknown.
    prometheus_url: str = ""
    prometheus_timeout: PositiveFloat = 10.0


class CheckConfig(FrozenModel):
    """Settings every check has; a check subclasses this to declare its own keys."""

    enabled: bool = True
    timeout: PositiveFloat = 10.0
    on_error: Literal["tempfail", "accept", "quarantine"] = "tempfail"


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MAILMOAT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    toml_path: ClassVar[Path | None] = None

    server: ServerConfig = ServerConfig()
    milter: MilterConfig = MilterConfig()
    backend: BackendConfig = MaildirBackendConfig()
    store: StoreConfig = StoreConfig()
    report: ReportConfig = ReportConfig()
    redis: RedisConfig = RedisConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    greylist: GreylistConfig = GreylistConfig()
    policy: PolicyConfig = PolicyConfig()
    antivirus: ClamdConfig = ClamdConfig()
    dns: DnsConfig = DnsConfig()
    training: TrainingConfig = TrainingConfig()
    rules: RulesConfig = RulesConfig()
    web: WebConfig = WebConfig()
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)

    def check_section(self, name: str) -> dict[str, Any]:
        """The raw ``[checks.NAME]`` table, validated later by the check itself."""
        return dict(self.checks.get(name, {}))


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming the bad key."""
    origin = str(path) if path is not None else "embedded defaults"
    toml_path: Path | None = None
    if path is not None:
        toml_path = Path(path)
        try:
            # Parse once ourselves so a syntax error is reported with its line and column.
            with toml_path.open("rb") as handle:
                tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{toml_path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: TOML syntax error: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{toml_path}: cannot read: {exc.strerror}") from exc
    settings_cls = type("FileSettings", (Settings,), {"toml_path": toml_path})
    try:
        settings: Settings = settings_cls()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc
    except (SettingsError, ValueError) as exc:
        # An environment variable that does not parse (e.g. invalid JSON for a list).
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"{origin}: {exc}{cause}") from exc
    _check_cross_fields(settings, origin)
    return settings


def _check_cross_fields(settings: Settings, origin: str) -> None:
    server = settings.server
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError(f"{origin}: server.tls_cert and server.tls_key must be set together")
    if server.submission_users is not None and server.tls_cert is None:
        raise ConfigError(
            f"{origin}: server.submission_users needs server.tls_cert and tls_key: "
            "passwords are only taken over TLS"
        )
    if server.require_tls and server.tls_cert is None:
        raise ConfigError(f"{origin}: server.require_tls needs server.tls_cert and tls_key")
    policy = settings.policy
    if not policy.tag <= policy.quarantine <= policy.reject:
        raise ConfigError(
            f"{origin}: policy thresholds must satisfy tag <= quarantine <= reject "
            f"(got {policy.tag}, {policy.quarantine}, {policy.reject})"
        )
    host, _ = server.listen_address if server.listen else ("*", 0)
    if host not in ("localhost", "*"):
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError(f"{origin}: server.listen: {host!r} is not an IP address") from exc
    open_relay = (
        settings.backend.kind != "maildir"
        and not server.accept_domains
        and server.recipient_map is None
    )
    if server.listen and open_relay and not server.allow_open_relay:
        raise ConfigError(
            f"{origin}: server.accept_domains is empty and the backend is an "
            f"{settings.backend.kind.upper()} server: Mailmoat would pass on mail for any "
            "domain, and a backend that trusts it (Postfix trusts loopback) would relay it "
            "to the internet: an open relay. List the domains you receive mail for in "
            "server.accept_domains (or the addresses in server.recipient_map), or set "
            "server.allow_open_relay = true if the backend refuses relaying itself"
        )
    if not server.listen and not settings.milter.listen:
        raise ConfigError(
            f"{origin}: nothing to serve: set server.listen (SMTP proxy), milter.listen, or both"
        )


class Score(NamedTuple):
    """One scores file entry: a weight, or points per unit of the model's spam log-odds.

    A ``per_log_odds`` entry scores ``weight * (log_odds - offset)``: nothing at the offset,
    points above it, points off below it.
    """

    weight: float
    description: str
    per_log_odds: bool = False
    offset: float = 0.0


def load_scores(path: Path) -> dict[str, Score]:
    """Read ``SYMBOL = {weight | per_log_odds, description}`` entries from a scores file.

    ``weight`` is the symbol's points (scaled by the finding's factor, 0..1); ``per_log_odds``
    is points per unit of the model's spam log-odds above ``log_odds_offset`` (ML_SPAM and
    ML_HAM in learned scores files, ``mailmoat model scores``). For a rule's name, the weight
    replaces the score in its file.
    """
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such scores file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    scores: dict[str, Score] = {}
    for symbol, entry in data.items():
        kinds = [k for k in ("weight", "per_log_odds") if isinstance(entry, dict) and k in entry]
        if len(kinds) != 1 or not isinstance(entry[kinds[0]], int | float):
            raise ConfigError(
                f"{path}: {symbol}: expected {{weight = <number>, description = ...}}"
                " (or per_log_odds = <number> for the model's symbols)"
            )
        unknown = set(entry) - {"weight", "per_log_odds", "log_odds_offset", "description"}
        if kinds[0] == "weight" and "log_odds_offset" in entry:
            unknown.add("log_odds_offset")
        if unknown:
            raise ConfigError(f"{path}: {symbol}: unknown keys {sorted(unknown)}")
        offset = entry.get("log_odds_offset", 0.0)
        if not isinstance(offset, int | float):
            raise ConfigError(f"{path}: {symbol}: log_odds_offset must be a number")
        per = kinds[0] == "per_log_odds"
        scores[symbol] = Score(
            float(entry[kinds[0]]), str(entry.get("description", "")), per, float(offset)
        )
    return scores
