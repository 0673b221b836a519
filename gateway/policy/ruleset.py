"""A compiled rule set in service: evaluate rules in order, turn hits into findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.context import ScanContext
from gateway.policy.compiler import Lists, Node
from gateway.policy.problems import Problem
from gateway.policy.rule_input import RuleInput
from gateway.policy.rules_schema import Rule
from gateway.types import Action, Effect, Finding, Status


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate, with where it came from."""

    rule: Rule
    node: Node
    file: str
    line: int


@dataclass(frozen=True)
class RuleHit:
    """A rule that matched, and why."""

    rule: CompiledRule
    reasons: list[str] = field(default_factory=list)

    def finding(self) -> Finding:
        """The rule's symbol for the verdict: its score, force, floor and scope as an Effect."""
        rule = self.rule.rule
        active = rule.mode == "active"
        detail: dict[str, Any] = {
            "mode": rule.mode,
            "file": self.rule.file,
            "line": self.rule.line,
            "matched": self.reasons[:10],
        }
        if not active and (rule.action is not None or rule.least is not None):
            # What it would have done, for review before it is promoted.
            detail["would"] = (rule.action or rule.least or Action.ACCEPT).value
        effect = Effect(
            score=(rule.score or 0.0) if active else 0.0,
            force=rule.action if active else None,
            least=rule.least if active else None,
            reply=rule.reply if active else None,
            domains=frozenset(d.lower() for d in rule.domains),
        )
        status = Status.FAIL if active else Status.NEUTRAL
        return Finding("rules", rule.name, status, detail, effect)


class RuleSet:
    """Compiled rules in evaluation order, their lists, and a version hash."""

    def __init__(
        self, rules: list[CompiledRule], lists: Lists, version: str, warnings: list[Problem]
    ) -> None:
        self.rules = rules
        self.lists = lists
        self.version = version
        self.warnings = warnings

    @property
    def names(self) -> list[str]:
        return [r.rule.name for r in self.rules]

    def evaluate(
        self, ctx: ScanContext, findings: Sequence[Finding], explain: bool = False
    ) -> list[RuleHit]:
        """Rules in order; each sees the checks' findings and the earlier rules' hits.

        A rule that matched always says why (the conditions that decided it, recorded in the
        event): the few hits are explained again, the many misses only tested. ``explain``
        explains every rule as it goes (``rules test``).
        """
        inp = RuleInput(ctx, list(findings))
        hits: list[RuleHit] = []
        for compiled in self.rules:
            if explain:
                matched, reasons = compiled.node.explain(inp)
            else:
                matched, reasons = compiled.node.test(inp), []
                if matched:
                    _, reasons = compiled.node.explain(inp)
            if matched:
                hit = RuleHit(compiled, reasons)
                hits.append(hit)
                # Later rules may test this rule's symbol.
                inp.symbols.setdefault(compiled.rule.name, []).append(hit.finding().detail)
        return hits
