"""Loading a rule set: YAML with line numbers, named lists, validation, compile, lint.

A rule set is every ``*.yaml`` file under the configured paths, plus named lists in
``lists/*.txt`` beside them; any error is reported as ``file:line: message (hint)``, and a
rule set with errors is never put in service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy.compiler import Compiler
from gateway.policy.lint import conflicts, forgeable_allow
from gateway.policy.problems import Problem, RuleSetError
from gateway.policy.rules_schema import Rule
from gateway.policy.ruleset import CompiledRule, RuleSet


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
            problems.extend(forgeable_allow(rule, str(file), line))
            compiled.append(CompiledRule(rule, node, str(file), line))
    problems.extend(conflicts(compiled))
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
