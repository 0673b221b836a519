"""Values that flow through the pipeline: Status, Action, Effect, Finding, Verdict."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """Outcome of one check for one symbol (Haraka's pass/fail/skip/err, SPF's result set)."""

    PASS = "pass"  # noqa: S105 - a result name, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    SKIP = "skip"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    ERROR = "error"


class Action(enum.StrEnum):
    """What happens to a message. Declared from mildest to strictest."""

    ACCEPT = "accept"
    TAG = "tag"
    QUARANTINE = "quarantine"
    DISCARD = "discard"
    TEMPFAIL = "tempfail"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        """Rank used when several actions compete: the strictest wins."""
        return _SEVERITY[self]


_SEVERITY = {action: rank for rank, action in enumerate(Action)}


class Phase(enum.StrEnum):
    """When a check runs: at a step of the SMTP dialogue, or once the message is in (DATA).

    As Haraka's hooks: a check that needs only the client (an IP reputation lookup) runs at
    CONNECT or RCPT, so that either front refuses early instead of after the whole message.
    """

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What is known before the message: the client, its HELO, the sender, this recipient."""

    client_ip: str = ""
    client_name: str = ""
    helo: str = ""
    mail_from: str = ""
    rcpt: str = ""
    tls: str = ""
    client_port: int = 0
    protocol: str = "ESMTP"  # SMTP after HELO, ESMTP after EHLO, ESMTPS with TLS (RFC 3848)
    session_id: str = ""  # our connection id: XFORWARD's IDENT, found in our events
    user: str = ""  # the authenticated (SMTP AUTH) user, if any


@dataclass(frozen=True, slots=True)
class Effect:
    """What a finding asks of the policy, typed (the policy never reads ``detail``).

    ``score`` replaces the symbol's configured weight (a rule's own score); ``factor`` scales
    it (0..1, the model's confidence); ``log_odds`` is the model's spam log-odds, which a
    scores file entry with ``per_log_odds`` multiplies instead (learned scores, uncapped).
    ``force`` sets the action over the thresholds (the strictest force wins); ``least`` is a
    floor the action is raised to and that no force, allow rule or score can lower.
    ``reply`` is the text the client sees if this finding decides; ``domains`` limits the
    effect to mail for those recipient domains.
    """

    score: float | None = None
    factor: float | None = None
    log_odds: float | None = None
    force: Action | None = None
    least: Action | None = None
    reply: str | None = None
    domains: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, for events and ``scan --json``."""
        shown: dict[str, Any] = {}
        for key in ("score", "factor", "log_odds", "reply"):
            if getattr(self, key) is not None:
                shown[key] = getattr(self, key)
        for key in ("force", "least"):
            value = getattr(self, key)
            if value is not None:
                shown[key] = value.value
        if self.domains:
            shown["domains"] = sorted(self.domains)
        return shown

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Effect:
        """Inverse of as_dict (replay decides recorded findings again)."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        def action(key: str) -> Action | None:
            value = data.get(key)
            return Action(value) if value in {a.value for a in Action} else None

        return cls(
            score=number("score"),
            factor=number("factor"),
            log_odds=number("log_odds"),
            force=action("force"),
            least=action("least"),
            reply=str(data["reply"]) if data.get("reply") is not None else None,
            domains=frozenset(map(str, data.get("domains", ()))),
        )


NO_EFFECT = Effect()


@dataclass(frozen=True, slots=True)
class Finding:
    """One symbol a check emitted, with its status, details and effect (never a score)."""

    check: str
    symbol: str
    status: Status
    detail: Mapping[str, Any] = field(default_factory=dict)
    effect: Effect = NO_EFFECT


@dataclass(frozen=True, slots=True)
class ScoredSymbol:
    """A finding with the weight the policy gave it."""

    name: str
    score: float
    check: str
    status: Status
    details: Mapping[str, Any]
    effect: Effect = NO_EFFECT

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape used by ``scan --json`` and the event store."""
        shown = {
            "name": self.name,
            "score": self.score,
            "check": self.check,
            "status": self.status.value,
            "details": dict(self.details),
        }
        effect = self.effect.as_dict()
        if effect:
            shown["effect"] = effect
        return shown


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one message and every symbol that made it."""

    action: Action
    score: float
    symbols: tuple[ScoredSymbol, ...]
    reason: str
    reply_text: str | None = None

    @property
    def symbol_names(self) -> tuple[str, ...]:
        """Names of every symbol, in the order they were found."""
        return tuple(s.name for s in self.symbols)
