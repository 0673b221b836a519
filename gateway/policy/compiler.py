"""Rule conditions compiled to closures (Nodes) that evaluate and explain themselves.

Every regex is compiled once (the ``regex`` module, with a timeout, over bounded text), and
every problem found is collected with its line.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import regex

from gateway.errors import ConfigError
from gateway.policy.lookalike import is_lookalike
from gateway.policy.problems import Problem
from gateway.policy.rule_input import MAX_TEXT, RuleInput
from gateway.policy.rules_schema import Condition, HeaderTest, IpTest, MatchSpec, Number, SymbolTest

log = logging.getLogger(__name__)

REGEX_TIMEOUT = 0.05  # seconds per search; a pathological pattern cannot stall the gateway


@dataclass(frozen=True, slots=True)
class Node:
    """A compiled condition: a test, a description, and children for all/any/not."""

    kind: str
    describe: str
    test: Callable[[RuleInput], bool]
    children: tuple[Node, ...] = ()

    def explain(self, inp: RuleInput) -> tuple[bool, list[str]]:
        """Evaluate, and say which conditions decided it."""
        if self.kind in ("all", "any"):
            reasons: list[str] = []
            results = []
            for child in self.children:
                ok, why = child.explain(inp)
                results.append(ok)
                if ok == (self.kind == "any") or self.kind == "all":
                    reasons.extend(why if ok else [])
            matched = all(results) if self.kind == "all" else any(results)
            return matched, reasons if matched else []
        if self.kind == "not":
            ok, _ = self.children[0].explain(inp)
            return (not ok), ([f"not ({self.children[0].describe})"] if not ok else [])
        matched = self.test(inp)
        return matched, [self.describe] if matched else []


Lists = Mapping[str, frozenset[str]]


class Compiler:
    """Turns validated conditions into Nodes; collects problems with their lines."""

    def __init__(self, lists: Lists, known_symbols: set[str], file: str) -> None:
        self.lists = lists
        self.known_symbols = known_symbols
        self.file = file
        self.problems: list[Problem] = []
        self.line = 0

    def problem(self, message: str, hint: str = "", severity: str = "error") -> None:
        self.problems.append(Problem(self.file, self.line, message, hint, severity))

    def _list(self, name: str) -> frozenset[str]:
        if name not in self.lists:
            close = difflib.get_close_matches(name, self.lists, n=1)
            self.problem(
                f"unknown list {name!r}",
                f"did you mean {close[0]!r}?" if close else "add rules/lists/NAME.txt",
            )
            return frozenset()
        return self.lists[name]

    def match(self, spec: MatchSpec) -> tuple[Callable[[str], bool], str]:
        if isinstance(spec, str):
            wanted = spec.casefold()
            return (lambda v: v.casefold() == wanted), f"= {spec!r}"
        if spec.equals is not None:
            return self.match(spec.equals)
        if spec.contains is not None:
            part = spec.contains.casefold()
            return (lambda v: part in v.casefold()), f"contains {spec.contains!r}"
        if spec.starts_with is not None:
            head = spec.starts_with.casefold()
            return (lambda v: v.casefold().startswith(head)), f"starts with {spec.starts_with!r}"
        if spec.ends_with is not None:
            tail = spec.ends_with.casefold()
            return (lambda v: v.casefold().endswith(tail)), f"ends with {spec.ends_with!r}"
        if spec.regex is not None:
            return self._regex(spec.regex), f"~ /{spec.regex}/"
        if spec.any_of is not None:
            options = frozenset(o.casefold() for o in spec.any_of)
            return (lambda v: v.casefold() in options), f"in {sorted(spec.any_of)}"
        if spec.in_list is not None:
            entries = self._list(spec.in_list)
            return (lambda v: _in_list(v, entries)), f"in list {spec.in_list!r}"
        assert spec.lookalike_of is not None  # noqa: S101 - Match guarantees one key
        protected = self._list(spec.lookalike_of)
        return (lambda v: is_lookalike(v, protected)), f"looks like one of {spec.lookalike_of!r}"

    def _regex(self, pattern: str) -> Callable[[str], bool]:
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION1)
        except regex.error as exc:
            self.problem(f"bad regex /{pattern}/: {exc}", "test it with python -m regex")
            return lambda v: False

        def search(value: str) -> bool:
            try:
                return compiled.search(value[:MAX_TEXT], timeout=REGEX_TIMEOUT) is not None
            except TimeoutError:
                log.warning(
                    "regex /%s/ timed out after %ss: treated as no match", pattern, REGEX_TIMEOUT
                )
                return False

        return search

    def number(self, spec: Number) -> tuple[Callable[[float], bool], str]:
        tests: list[Callable[[float], bool]] = []
        words = []
        for op, bound in (
            ("gt", spec.gt),
            ("ge", spec.ge),
            ("lt", spec.lt),
            ("le", spec.le),
            ("eq", spec.eq),
        ):
            if bound is None:
                continue
            words.append(f"{op} {bound:g}")
            tests.append(
                {
                    "gt": lambda v, b=bound: v > b,
                    "ge": lambda v, b=bound: v >= b,
                    "lt": lambda v, b=bound: v < b,
                    "le": lambda v, b=bound: v <= b,
                    "eq": lambda v, b=bound: v == b,
                }[op]
            )
        return (lambda v: all(t(v) for t in tests)), " and ".join(words)

    def compile(self, cond: Condition) -> Node:
        kind, value = cond.kind, cond.value
        if kind in ("all", "any"):
            if not value:
                self.problem(
                    f"empty '{kind}'", "an empty any never matches, an empty all always does"
                )
            children = tuple(self.compile(c) for c in value)
            self._contradiction(kind, children)
            join = all if kind == "all" else any
            return Node(
                kind, f"{kind}(...)", lambda inp: join(c.test(inp) for c in children), children
            )
        if kind == "not":
            child = self.compile(value)
            return Node("not", f"not ({child.describe})", lambda inp: not child.test(inp), (child,))
        return self._leaf(kind, value)

    def _contradiction(self, kind: str, children: tuple[Node, ...]) -> None:
        if kind != "all":
            return
        positive = {c.describe for c in children if c.kind != "not"}
        for child in children:
            if child.kind == "not" and child.children[0].describe in positive:
                self.problem(
                    f"contradictory condition: all of X and not X ({child.children[0].describe})",
                    "this rule can never match",
                )

    def _leaf(self, kind: str, value: Any) -> Node:
        many: dict[str, Callable[[RuleInput], list[str]]] = {
            "from_address": lambda i: i.from_addresses,
            "from_name": lambda i: i.from_names,
            "from_domain": lambda i: i.from_domains,
            "sender": lambda i: i.sender,
            "verified_sender": lambda i: i.verified_sender,
            "verified_from": lambda i: i.verified_from,
            "sender_domain": lambda i: i.sender_domain,
            "recipient": lambda i: i.recipients,
            "recipient_domain": lambda i: i.recipient_domains,
            "helo": lambda i: [i.ctx.envelope.helo],
            "subject": lambda i: i.subject,
            "body": lambda i: i.body,
            "url": lambda i: i.urls,
            "url_domain": lambda i: i.url_domains,
            "attachment_name": lambda i: [n for n, _ in i.attachments if n],
            "attachment_type": lambda i: [t for _, t in i.attachments],
            "attachment_true_type": lambda i: i.true_types,
            "archive_member": lambda i: i.archive_members,
        }
        if kind in many:
            values, (test, words) = many[kind], self.match(value)
            return Node(kind, f"{kind} {words}", lambda inp: any(test(v) for v in values(inp)))
        if kind == "header":
            return self._header(value)
        if kind == "client_ip":
            return self._ip(value)
        if kind == "tls":
            return Node(kind, f"tls is {value}", lambda inp: bool(inp.ctx.envelope.tls) is value)
        if kind == "user_allowed":
            return Node(kind, f"user allowed is {value}", lambda inp: inp.user_allowed is value)
        if kind == "size":
            within, bounds = self.number(value)
            return Node(kind, f"size {bounds}", lambda inp: within(len(inp.ctx.envelope.raw)))
        if kind == "spam_probability":
            likely, bounds = self.number(value)

            def probability(inp: RuleInput) -> bool:
                p = inp.spam_probability
                return p is not None and likely(p)

            return Node(kind, f"spam probability {bounds}", probability)
        if kind == "symbol":
            return self._symbol(value)
        raise ConfigError(f"unhandled condition {kind}")  # the schema forbids this

    def _header(self, spec: HeaderTest) -> Node:
        name = spec.name
        if spec.exists is not None:
            want = spec.exists
            return Node("header", f"header {name} exists is {want}",
                        lambda inp: bool(inp.ctx.message.headers(name)) is want)  # fmt: skip
        if spec.count is not None:
            count, counted = self.number(spec.count)
            return Node("header", f"count of header {name} {counted}",
                        lambda inp: count(len(inp.ctx.message.headers(name))))  # fmt: skip
        if spec.match is not None:
            match, words = self.match(spec.match)
            return Node("header", f"header {name} {words}",
                        lambda inp: any(match(v) for v in inp.header_values(name)))  # fmt: skip
        self.problem(f"header {name!r}: give exists, match or count")
        return Node("header", "invalid", lambda inp: False)

    def _ip(self, spec: IpTest) -> Node:
        networks = []
        for text in [*(spec.cidr or []), *(self._list(spec.in_list) if spec.in_list else [])]:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.problem(f"not a network: {text!r}", "write 192.0.2.0/24 or 2001:db8::/32")

        def test(inp: RuleInput) -> bool:
            try:
                ip = ipaddress.ip_address(inp.ctx.envelope.client_ip)
            except ValueError:
                return False
            return any(ip in net for net in networks if net.version == ip.version)

        shown = f"list {spec.in_list!r}" if spec.in_list else ", ".join(spec.cidr or [])
        return Node("client_ip", f"client ip in {shown}", test)

    def _symbol(self, spec: str | SymbolTest) -> Node:
        name = spec if isinstance(spec, str) else spec.name
        if name not in self.known_symbols:
            close = difflib.get_close_matches(name, self.known_symbols, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/checks/ for symbols"
            self.problem(f"unknown symbol {name!r}", hint)
        details = (
            {} if isinstance(spec, str) else {k: self.match(v) for k, v in spec.details.items()}
        )

        def test(inp: RuleInput) -> bool:
            for detail in inp.symbols.get(name, []):
                if all(
                    any(m(str(x)) for x in _values(detail.get(k))) for k, (m, _) in details.items()
                ):
                    return True
            return False

        words = " and ".join(f"{k} {w}" for k, (_, w) in details.items())
        return Node("symbol", f"symbol {name}" + (f" with {words}" if words else ""), test)


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [v for item in value for v in (_values(item) if isinstance(item, dict) else [item])]
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _in_list(value: str, entries: frozenset[str]) -> bool:
    """Exact (case-insensitive) entries; an entry '.example.com' also matches subdomains."""
    folded = value.casefold()
    if folded in entries:
        return True
    return any(folded.endswith(e) for e in entries if e.startswith("."))
