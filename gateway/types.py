"""Values that flow through the pipeline: Status, Action, Finding, Verdict."""

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


@dataclass(frozen=True, slots=True)
class Finding:
    """One symbol a check emitted, with its status and details (never a score)."""

    check: str
    symbol: str
    status: Status
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScoredSymbol:
    """A finding with the weight the policy gave it."""

    name: str
    score: float
    check: str
    status: Status
    details: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape used by ``scan --json`` and the event store."""
        return {
            "name": self.name,
            "score": self.score,
            "check": self.check,
            "status": self.status.value,
            "details": dict(self.details),
        }


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
