"""Checks across rules beyond the schema: forgeable allows, conflicting forces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.policy.problems import Problem
from gateway.policy.rules_schema import Condition, Rule
from gateway.policy.ruleset import CompiledRule
from gateway.types import Action

# Tests of what any sender can write: an allow on them alone is an allow for everyone.
FORGEABLE = frozenset({"sender", "sender_domain", "from_address", "from_domain", "from_name"})


def positive_leaves(cond: Condition) -> Iterable[str]:
    if cond.kind in ("all", "any"):
        for child in cond.value:
            yield from positive_leaves(child)
    elif cond.kind != "not":
        yield cond.kind


def forgeable_allow(rule: Rule, file: str, line: int) -> list[Problem]:
    """An accept (or a negative score) that rests on a forgeable sender test alone."""
    allows = rule.action is Action.ACCEPT or (rule.score is not None and rule.score < 0)
    leaves = set(positive_leaves(rule.when))
    if not allows or not leaves or not leaves <= FORGEABLE:
        return []
    message = f"{rule.name}: allows on {', '.join(sorted(leaves))}, which any sender can forge"
    hint = "use verified_sender / verified_from (SPF or aligned DKIM proof), or client_ip"
    return [Problem(file, line, message, hint, "warning")]


def conflicts(rules: Sequence[CompiledRule]) -> list[Problem]:
    """Rules with the same condition but different forced actions: one of them is dead."""
    problems = []
    by_condition: dict[str, CompiledRule] = {}
    for compiled in rules:
        key = compiled.rule.when.model_dump_json(by_alias=True)
        other = by_condition.get(key)
        rule = compiled.rule
        if (
            other is not None
            and rule.action
            and other.rule.action
            and rule.action != other.rule.action
        ):
            message = (
                f"{rule.name} has the same condition as {other.rule.name} ({other.file}:"
                f"{other.line}) but forces {rule.action.value}, not {other.rule.action.value}"
            )
            hint = "merge them; the stricter action always wins"
            problems.append(Problem(compiled.file, compiled.line, message, hint))
        by_condition.setdefault(key, compiled)
    return problems
