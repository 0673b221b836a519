"""Staff rules: load YAML with line numbers, lint, compile to closures, evaluate, explain.

A rule set is every ``*.yaml`` file under the configured paths, plus named lists in
``lists/*.txt`` beside them. Loading validates the schema (``rules_schema``), compiles each
regex once (the ``regex`` module, with a timeout, over bounded text), and resolves lists;
any error is reported as ``file:line: message (hint)``, and a rule set with errors is never
put in service.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import regex
import yaml
from pydantic import ValidationError

from gateway.auth.dmarc import organizational_domain
from gateway.context import ScanContext
from gateway.errors import ConfigError
from gateway.ml.features import message_urls
from gateway.policy.rules_schema import (
    Condition,
    HeaderTest,
    IpTest,
    MatchSpec,
    Number,
    Rule,
    SymbolTest,
)
from gateway.types import Action, Effect, Finding, Status

log = logging.getLogger(__name__)

MAX_TEXT = 100_000  # characters of subject/body a regex may look at
REGEX_TIMEOUT = 0.05  # seconds per search; a pathological pattern cannot stall the gateway


@dataclass(frozen=True, slots=True)
class Problem:
    """A lint finding: where, what, and how to fix it."""

    file: str
    line: int
    message: str
    hint: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.file}:{self.line}: {self.severity}: {self.message}{hint}"


class RuleSetError(ConfigError):
    """A rule set that must not go into service; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in problems))


# --- the message as rules see it --------------------------------------------------------


class RuleInput:
    """Values rules test, computed on first use and shared by every rule for one message."""

    def __init__(self, ctx: ScanContext, findings: Sequence[Finding]) -> None:
        self.ctx = ctx
        self.findings = findings

    @cached_property
    def symbols(self) -> dict[str, list[Mapping[str, Any]]]:
        found: dict[str, list[Mapping[str, Any]]] = {}
        for finding in self.findings:
            found.setdefault(finding.symbol, []).append(finding.detail)
        return found

    @cached_property
    def from_addresses(self) -> list[str]:
        return [m.address.lower() for m in self.ctx.message.from_mailboxes]

    @cached_property
    def from_names(self) -> list[str]:
        return [m.display_name for m in self.ctx.message.from_mailboxes if m.display_name]

    @cached_property
    def from_domains(self) -> list[str]:
        return [m.domain for m in self.ctx.message.from_mailboxes if m.domain]

    @cached_property
    def sender(self) -> list[str]:
        return [self.ctx.envelope.mail_from.lower()]

    @cached_property
    def verified_sender(self) -> list[str]:
        """The envelope sender, only when SPF passed for its domain (proof, not a claim)."""
        domain = self.sender_domain[0] if self.sender_domain else ""
        passed = any(
            str(d.get("domain", "")).lower().rstrip(".") == domain
            for d in self.symbols.get("SPF_PASS", [])
        )
        return self.sender if domain and passed else []

    @cached_property
    def verified_from(self) -> list[str]:
        """From addresses whose domain has an aligned DKIM pass or a DMARC pass.

        SpamAssassin's whitelist_auth: a From address alone is a claim anyone can make.
        """
        signers = {
            organizational_domain(str(sig.get("domain", "")))
            for d in self.symbols.get("DKIM_VALID", [])
            for sig in d.get("signatures", [])
        }
        dmarc = {str(d.get("from_domain", "")) for d in self.symbols.get("DMARC_PASS", [])}
        return [
            m.address.lower()
            for m in self.ctx.message.from_mailboxes
            if m.domain and (m.domain in dmarc or organizational_domain(m.domain) in signers)
        ]

    @cached_property
    def sender_domain(self) -> list[str]:
        sender = self.ctx.envelope.mail_from
        return [sender.rpartition("@")[2].lower()] if "@" in sender else []

    @cached_property
    def recipients(self) -> list[str]:
        return [r.lower() for r in self.ctx.envelope.rcpts]

    @cached_property
    def recipient_domains(self) -> list[str]:
        return sorted({r.rpartition("@")[2] for r in self.recipients if "@" in r})

    @cached_property
    def subject(self) -> list[str]:
        return [self.ctx.message.subject[:MAX_TEXT]]

    @cached_property
    def body(self) -> list[str]:
        return [self.ctx.features.text.partition("\n")[2][:MAX_TEXT]]

    @cached_property
    def urls(self) -> list[str]:
        return message_urls(self.ctx.message)

    @cached_property
    def url_domains(self) -> list[str]:
        return sorted({t[4:] for t in self.ctx.features.tokens if t.startswith("url:")})

    @cached_property
    def attachments(self) -> list[tuple[str, str]]:
        walk = self.ctx.message.walk()
        return [(p.filename, p.content_type) for p in walk.parts if p.is_attachment]

    @cached_property
    def true_types(self) -> list[str]:
        return [str(f["true_type"]) for f in self.ctx.inspected_files if f.get("true_type")]

    @cached_property
    def archive_members(self) -> list[str]:
        return [str(f["file"]) for f in self.ctx.inspected_files if f.get("in_archive")]

    @cached_property
    def spam_probability(self) -> float | None:
        for details in self.symbols.get("ML_SPAM", []) + self.symbols.get("ML_HAM", []):
            if "probability" in details:
                return float(details["probability"])
        return None

    def header_values(self, name: str) -> list[str]:
        from gateway.message import decode_header_value

        return [decode_header_value(v) for v in self.ctx.message.headers(name)]


# --- compiling conditions ---------------------------------------------------------------


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


def _damerau(a: str, b: str) -> int:
    """Optimal string alignment distance (Damerau-Levenshtein), small strings only."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "@": "a", "$": "s"})


@lru_cache(maxsize=8192)
def is_lookalike(candidate: str, protected: frozenset[str]) -> bool:
    """A near-miss of a protected domain: one edit away, or equal after confusables (0->o).

    Cached: the same senders come again and again, and each answer is a few edit distances.
    """
    cand = candidate.lower().rstrip(".")
    squashed = cand.replace("rn", "m").replace("vv", "w").translate(_CONFUSABLE)
    for real in protected:
        if cand == real:
            return False
    for real in protected:
        if squashed == real.replace("rn", "m").translate(_CONFUSABLE) or (
            len(real) >= 5 and abs(len(cand) - len(real)) <= 1 and _damerau(cand, real) == 1
        ):
            return True
    return False


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


# --- loading ----------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that keeps nodes, so errors can be traced back to their line."""


def _line_of(node: yaml.Node | None, path: Sequence[Any]) -> int:
    """The line (1-based) of the YAML node at a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in path:
        if node is None:
            break
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is not None:
            line = node.start_mark.line + 1
    return line


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
        """Rules in order; each sees the checks' findings and the earlier rules' hits."""
        inp = RuleInput(ctx, list(findings))
        hits: list[RuleHit] = []
        for compiled in self.rules:
            if explain:
                matched, reasons = compiled.node.explain(inp)
            else:
                matched, reasons = compiled.node.test(inp), []
            if matched:
                hit = RuleHit(compiled, reasons)
                hits.append(hit)
                # Later rules may test this rule's symbol.
                inp.symbols.setdefault(compiled.rule.name, []).append(hit.finding().detail)
        return hits


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """Every *.yaml/*.yml file under the paths (sorted), or the files themselves."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            files.append(path)
        else:
            raise RuleSetError([Problem(str(path), 0, "no such rule file or directory")])
    return files


def load_lists(paths: Iterable[Path]) -> tuple[dict[str, frozenset[str]], list[tuple[Path, bytes]]]:
    """Named lists from lists/*.txt under each rules directory: one entry per line, # comments.

    A list that cannot be read (a dangling link, not UTF-8) is a RuleSetError naming it.
    """
    lists: dict[str, frozenset[str]] = {}
    sources = []
    problems: list[Problem] = []
    for path in paths:
        folder = (path if path.is_dir() else path.parent) / "lists"
        for file in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            data = _read(file, problems)
            if data is None:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(str(file), _line_at(data, exc.start),
                                        "not UTF-8 text", "save the list as UTF-8"))  # fmt: skip
                continue
            sources.append((file, data))
            entries = (line.split("#", 1)[0].strip().casefold() for line in text.splitlines())
            lists[file.stem] = frozenset(e for e in entries if e)
    if problems:
        raise RuleSetError(problems)
    return lists, sources


def _read(file: Path, problems: list[Problem]) -> bytes | None:
    """A file's bytes, or a Problem (a dangling symlink, no permission, a directory)."""
    try:
        return file.read_bytes()
    except OSError as exc:
        hint = "a symlink whose target is gone" if file.is_symlink() else ""
        problems.append(Problem(str(file), 0, f"cannot read: {exc.strerror or exc}", hint))
        return None


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def load_rules(paths: Sequence[Path], known_symbols: Iterable[str]) -> RuleSet:
    """Load, validate and compile; raise RuleSetError listing every error with file:line."""
    lists, list_sources = load_lists(paths)
    files = rule_files(paths)
    problems: list[Problem] = []
    compiled: list[CompiledRule] = []
    digest = hashlib.sha256()
    for file, data in list_sources:
        digest.update(file.name.encode() + b"\0" + data)
    rules_by_file: list[tuple[Path, list[tuple[Rule, int]]]] = []
    for file in files:
        content = _read(file, problems)
        if content is None:
            continue
        digest.update(file.name.encode() + b"\0" + content)
        parsed = _parse_file(file, content, problems)
        if parsed is not None:
            rules_by_file.append((file, parsed))
    symbols = set(known_symbols) | {rule.name for _, rs in rules_by_file for rule, _ in rs}
    seen: dict[str, str] = {}
    for file, parsed in rules_by_file:
        for rule, line in parsed:
            where = f"{file}:{line}"
            if rule.name in seen:
                problems.append(Problem(str(file), line, f"duplicate rule name {rule.name}",
                                        f"first defined at {seen[rule.name]}"))  # fmt: skip
                continue
            seen[rule.name] = where
            compiler = Compiler(lists, symbols - {rule.name}, str(file))
            compiler.line = line
            node = compiler.compile(rule.when)
            problems.extend(compiler.problems)
            problems.extend(_forgeable_allow(rule, str(file), line))
            compiled.append(CompiledRule(rule, node, str(file), line))
    problems.extend(_conflicts(compiled))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise RuleSetError(problems)
    return RuleSet(
        compiled, lists, digest.hexdigest()[:12], [p for p in problems if p.severity != "error"]
    )


def _parse_file(file: Path, data: bytes, problems: list[Problem]) -> list[tuple[Rule, int]] | None:
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=_LineLoader)
        raw = yaml.load(data.decode("utf-8"), Loader=_LineLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problems.append(Problem(str(file), line, f"YAML: {getattr(exc, 'problem', exc)}",
                                "check indentation and quoting"))  # fmt: skip
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(file), _line_at(data, exc.start), "not UTF-8 text"))
        return None
    if raw is None:
        return []
    if not isinstance(raw, dict) or set(raw) != {"rules"} or not isinstance(raw["rules"], list):
        problems.append(Problem(str(file), 1, "a rule file is a mapping with one key, 'rules', "
                                "holding a list of rules", "see docs/rules.md"))  # fmt: skip
        return None
    rules_node = next((v for k, v in node.value if k.value == "rules"), None) if node else None
    parsed: list[tuple[Rule, int]] = []
    # Each rule is validated on its own, so one bad rule does not hide the others' problems.
    for index, item in enumerate(raw["rules"]):
        line = _line_of(rules_node, [index])
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            for error in exc.errors():
                loc = [
                    p for p in error["loc"] if not (isinstance(p, str) and p in ("str", "Match"))
                ]
                name = item.get("name", f"rule {index + 1}") if isinstance(item, dict) else index
                key = ".".join(str(p) for p in loc) or "rule"
                hint = ""
                if error["type"] == "extra_forbidden":
                    hint = "unknown field; `mailmoat rules schema` lists the fields a rule takes"
                where = _line_of(rules_node, [index, *loc])
                problems.append(Problem(str(file), where, f"{name}: {key}: {error['msg']}", hint))
            continue
        if isinstance(item, dict) and "mode" not in item:
            message = f"{rule.name}: no mode given, so it is in monitor mode"
            hint = "set mode: active once it has been replayed"
            problems.append(Problem(str(file), line, message, hint, "warning"))
        parsed.append((rule, line))
    return parsed


# Tests of what any sender can write: an allow on them alone is an allow for everyone.
FORGEABLE = frozenset({"sender", "sender_domain", "from_address", "from_domain", "from_name"})


def _positive_leaves(cond: Condition) -> Iterable[str]:
    if cond.kind in ("all", "any"):
        for child in cond.value:
            yield from _positive_leaves(child)
    elif cond.kind != "not":
        yield cond.kind


def _forgeable_allow(rule: Rule, file: str, line: int) -> list[Problem]:
    """An accept (or a negative score) that rests on a forgeable sender test alone."""
    allows = rule.action is Action.ACCEPT or (rule.score is not None and rule.score < 0)
    leaves = set(_positive_leaves(rule.when))
    if not allows or not leaves or not leaves <= FORGEABLE:
        return []
    message = f"{rule.name}: allows on {', '.join(sorted(leaves))}, which any sender can forge"
    hint = "use verified_sender / verified_from (SPF or aligned DKIM proof), or client_ip"
    return [Problem(file, line, message, hint, "warning")]


def _conflicts(rules: Sequence[CompiledRule]) -> list[Problem]:
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
