"""Staff rules: the public face of the rule engine (one import for callers).

The engine is split by job: ``rule_input`` (the message as rules see it), ``compiler``
(conditions to closures, regexes with a timeout), ``lookalike`` (near-miss domains),
``ruleset`` (evaluation, hits as findings with typed effects), ``loader`` (YAML with line
numbers, lists) and ``lint`` (forgeable allows, conflicting forces).
"""

from __future__ import annotations

from gateway.policy.compiler import REGEX_TIMEOUT, Compiler, Lists, Node
from gateway.policy.lint import FORGEABLE
from gateway.policy.loader import load_lists, load_rules, rule_files
from gateway.policy.lookalike import is_lookalike
from gateway.policy.problems import Problem, RuleSetError
from gateway.policy.rule_input import MAX_TEXT, RuleInput
from gateway.policy.ruleset import CompiledRule, RuleHit, RuleSet

__all__ = [
    "FORGEABLE",
    "MAX_TEXT",
    "REGEX_TIMEOUT",
    "CompiledRule",
    "Compiler",
    "Lists",
    "Node",
    "Problem",
    "RuleHit",
    "RuleInput",
    "RuleSet",
    "RuleSetError",
    "is_lookalike",
    "load_lists",
    "load_rules",
    "rule_files",
]
