"""Run the enabled checks on one message, concurrently and bounded in time, into a verdict."""

from __future__ import annotations

import asyncio
import difflib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.checks import REGISTRY
from gateway.checks.base import Check
from gateway.config import Settings, load_scores
from gateway.context import ScanContext
from gateway.errors import ConfigError, NotConfigured
from gateway.policy.rules import RuleHit, RuleSet, load_rules
from gateway.policy.verdict import Policy
from gateway.services import Services
from gateway.types import Action, Finding, Phase, SessionInfo, Status, Verdict

log = logging.getLogger(__name__)

PARSE_IN_THREAD_BYTES = 1 << 20
# The stdlib MIME parser costs more than linear time in the nesting depth (bench.parsers):
# a message declaring this many multiparts is parsed in a thread, whatever its size.
PARSE_IN_THREAD_MULTIPARTS = 50


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A verdict and how long each check took."""

    verdict: Verdict
    timings_ms: dict[str, float]
    rule_hits: tuple[RuleHit, ...] = ()


def known_symbols(checks: Sequence[Check]) -> set[str]:
    """Every symbol a rule may test: all registered checks' symbols and their error symbols."""
    symbols = {f"{cls.name.upper()}_ERROR" for cls in REGISTRY}
    for cls in REGISTRY:
        symbols.update(cls.symbols)
    return symbols


def policy_problems(
    settings: Settings, rules: RuleSet | None, scores: Mapping[str, object]
) -> list[str]:
    """Symbols in scores.toml (``scores``, as loaded) or [policy] force that nothing emits:
    a typo acts on nothing.

    ``VIRUS_FUOND = "score"`` would leave the virus forced and look like it did not.
    """
    known = known_symbols([]) | set(rules.names if rules is not None else ())
    problems = []
    scores_file = settings.policy.scores_file
    for symbol in scores:
        if symbol not in known:
            problems.append(
                f"{scores_file}: {symbol}: no check emits this symbol{_near(symbol, known)}"
            )
    for symbol in settings.policy.force:
        if symbol not in known:
            problems.append(
                f"[policy] force: {symbol}: nothing emits this symbol{_near(symbol, known)}"
            )
    return problems


def _near(symbol: str, known: set[str]) -> str:
    close = difflib.get_close_matches(symbol, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def build_checks(settings: Settings, services: Services | None = None) -> list[Check]:
    """Instantiate every enabled check of the registry, in registry order."""
    checks: list[Check] = []
    known = {cls.name for cls in REGISTRY}
    for name in settings.checks:
        if name not in known:
            raise ConfigError(f"checks.{name}: no such check (known: {sorted(known)})")
    for cls in REGISTRY:
        try:
            checks.append(cls.from_config(settings.check_section(cls.name), settings, services))
        except NotConfigured as reason:
            log.info("disabled check %s: %s", cls.name, reason)
    log.info("enabled checks: %s", [c.name for c in checks])
    return checks


class Pipeline:
    """The checks, the staff rules and the policy in service; replaced whole on reload."""

    def __init__(
        self,
        checks: Sequence[Check],
        policy: Policy,
        rules: RuleSet | None = None,
        problems: Sequence[str] = (),
    ) -> None:
        self.checks = tuple(checks)
        self.policy = policy
        self.rules = rules
        # What `mailmoat config check` reports as errors (logged as warnings in service).
        self.problems = tuple(problems)

    @classmethod
    def from_settings(cls, settings: Settings, services: Services | None = None) -> Pipeline:
        """Build checks and policy; raise ConfigError on any invalid part.

        ``services`` are the shared clients to hand the checks (kept across reloads).
        """
        checks = build_checks(settings, services)
        scores = load_scores(settings.policy.scores_file)
        for check in checks:
            for symbol in check.symbols:
                if symbol not in scores:
                    log.warning(
                        "symbol %s of check %s has no score; it weighs 0", symbol, check.name
                    )
        policy = Policy(
            config=settings.policy,
            weights={symbol: score.weight for symbol, score in scores.items()},
            on_error={check.name: check.config.on_error for check in checks},
            per_log_odds={s: score.offset for s, score in scores.items() if score.per_log_odds},
        )
        rules = None
        if settings.rules.enabled:
            rules = load_rules(settings.rules.paths, known_symbols(checks))
            for warning in rules.warnings:
                log.warning("%s", warning)
            log.info("rules: %d loaded, version %s", len(rules.rules), rules.version)
        problems = policy_problems(settings, rules, scores)
        for problem in problems:
            log.warning("%s", problem)
        return cls(checks, policy, rules, problems)

    async def scan(self, ctx: ScanContext, explain: bool = False) -> ScanResult:
        """Run every check; a failing or slow check becomes an ERROR finding.

        Those that wait on a server run concurrently with the rest (``waits_on_network``).
        """
        envelope = ctx.envelope
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # Parse once, up front, so no check pays for it and none parses again. A big message
        # is parsed in a thread so other sessions are not stalled meanwhile.
        raw = envelope.raw
        if (
            len(raw) > PARSE_IN_THREAD_BYTES
            or raw.count(b"ultipart/") + raw.count(b"ULTIPART/") > PARSE_IN_THREAD_MULTIPARTS
        ):
            await asyncio.to_thread(getattr, ctx, "message")
        else:
            _ = ctx.message
        timings["parse"] = round((time.perf_counter() - started) * 1000, 3)
        results: dict[str, Sequence[Finding]] = {}
        # The checks that wait on a server (clamd, DNS, Redis) start first, as tasks (run up
        # to their first wait); the others then run one after another while those wait.
        # As tasks too, each waited its turn on the loop behind every other session's work,
        # several times a message: at 10 sessions on 2 cores (bench.peers' messages) this
        # way gives 10-15% more messages a second, lower p50 and p99, less CPU a message.
        waiting = [c for c in self.checks if getattr(c, "waits_on_network", False)]
        async with asyncio.TaskGroup() as group:
            for check in waiting:
                call = functools.partial(check.run, ctx)
                group.create_task(self._run_one(check, call, results, timings, envelope.id))
            if waiting:
                await asyncio.sleep(0)  # let them start before the CPU work
            big = len(raw) > PARSE_IN_THREAD_BYTES
            for check in self.checks:
                if check not in waiting:
                    call = functools.partial(check.run, ctx)
                    await self._run_one(check, call, results, timings, envelope.id)
                    if big:
                        await asyncio.sleep(0)  # a big message lets other sessions in
        findings = [f for check in self.checks for f in results.get(check.name, ())]
        hits: list[RuleHit] = []
        if self.rules is not None:
            started = time.perf_counter()
            hits = self.rules.evaluate(ctx, findings, explain=explain)
            findings.extend(hit.finding() for hit in hits)
            timings["rules"] = round((time.perf_counter() - started) * 1000, 3)
        return ScanResult(self.policy.decide(findings, envelope.rcpts), timings, tuple(hits))

    async def early(self, phase: Phase, session: SessionInfo) -> Verdict | None:
        """Run the checks that declared ``phase``; the verdict when it refuses, else None.

        Only a refusal (reject, tempfail) acts this early; anything milder waits for the
        message, where every check and rule has its say.
        """
        checks = [c for c in self.checks if phase in getattr(c, "phases", ())]
        if not checks:
            return None
        results: dict[str, Sequence[Finding]] = {}
        timings: dict[str, float] = {}

        what = f"{phase.value} from {session.client_ip}"
        async with asyncio.TaskGroup() as group:
            for check in checks:
                call = functools.partial(check.run_early, phase, session)  # type: ignore[attr-defined]
                group.create_task(self._run_one(check, call, results, timings, what))
        findings = [f for check in checks for f in results.get(check.name, ())]
        verdict = self.policy.decide(findings, [session.rcpt] if session.rcpt else [])
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return verdict
        return None

    async def _run_one(
        self,
        check: Check,
        call: Callable[[], Awaitable[Sequence[Finding]]],
        results: dict[str, Sequence[Finding]],
        timings: dict[str, float],
        what: str,
    ) -> None:
        started = time.perf_counter()
        error_symbol = f"{check.name.upper()}_ERROR"
        try:
            async with asyncio.timeout(check.config.timeout):
                results[check.name] = await call()
        except TimeoutError:
            log.warning(
                "check %s timed out after %ss on %s",
                check.name,
                check.config.timeout,
                what,
            )
            results[check.name] = [
                Finding(check.name, error_symbol, Status.ERROR, {"error": "timeout"})
            ]
        except Exception as exc:
            # A bug or an outage in one check must not crash the message: record and go on.
            log.exception("check %s failed on %s", check.name, what)
            results[check.name] = [
                Finding(
                    check.name,
                    error_symbol,
                    Status.ERROR,
                    {"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            ]
        finally:
            timings[check.name] = round((time.perf_counter() - started) * 1000, 3)

    async def aclose(self) -> None:
        """Close every check."""
        for check in self.checks:
            try:
                await check.aclose()
            except Exception:
                log.exception("closing check %s failed", check.name)
