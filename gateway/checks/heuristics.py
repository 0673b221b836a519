"""Heuristics: the URL, HTML and text tricks of gateway.ml.facts, as symbols for scores and rules.

The facts are computed once with the model's features (one pass over the parts); this check
only reports them. They are evidence, not verdicts: a newsletter hides a preheader and links
through a tracker, so each weighs little alone; the shipped rules (rules/heuristics.yaml)
combine them with lures, and `mailmoat model scores` learns what they are worth on your mail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from gateway.checks.base import parse_section
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.ml.facts import FACTS
from gateway.services import Services
from gateway.types import Finding, Status


class HeuristicsConfig(CheckConfig):
    """No keys beyond the common ones."""


@dataclass(slots=True)
class HeuristicsCheck:
    """Reports each fact of the message (gateway.ml.facts) as its symbol."""

    name: ClassVar[str] = "heuristics"
    symbols: ClassVar[Mapping[str, str]] = FACTS
    config: CheckConfig

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        return cls(parse_section(cls.name, HeuristicsConfig, section))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        return [
            Finding(self.name, symbol, Status.FAIL, dict(detail))
            for symbol, detail in sorted(ctx.facts.items())
        ]

    async def aclose(self) -> None:
        return None
