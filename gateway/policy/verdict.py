"""Turn findings into a Verdict: forced actions, then the error policy, then thresholds.

Rules' findings (check "rules") carry their own score and, when active, a forced action. A
rule limited to some recipient domains, and thresholds set per domain in [policy.domains],
make the decision depend on the recipient: a message to several domains is decided for each
and takes the strictest outcome, and the reason says which domain decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.config import PolicyConfig
from gateway.types import Action, Finding, ScoredSymbol, Status, Verdict

# What a check's on_error setting turns an ERROR finding into.
_ERROR_ACTIONS = {"tempfail": Action.TEMPFAIL, "quarantine": Action.QUARANTINE}


@dataclass(frozen=True, slots=True)
class Policy:
    """Weights, thresholds and forced actions, loaded once and swapped whole on reload."""

    config: PolicyConfig
    weights: Mapping[str, float]
    on_error: Mapping[str, str]

    def score(self, finding: Finding) -> float:
        """The weight of a finding. Error symbols weigh 0: an outage is not evidence of spam."""
        if finding.status is Status.ERROR:
            return 0.0
        if finding.check == "rules":
            return float(finding.detail.get("rule_score", 0.0))
        weight = self.weights.get(finding.symbol, 0.0)
        # A check may scale its symbol's weight (0..1), e.g. by the model's probability.
        factor = finding.detail.get("factor")
        if isinstance(factor, int | float):
            weight *= min(1.0, max(0.0, float(factor)))
        return round(weight, 3)

    def decide(self, findings: Iterable[Finding], recipients: Sequence[str] = ()) -> Verdict:
        """The strictest of the verdicts for each recipient domain."""
        findings = list(findings)
        domains = sorted({r.rpartition("@")[2].lower() for r in recipients if "@" in r})
        if not domains or (len(domains) == 1 and not self._domain_specific(findings, domains)):
            return self._decide(findings, domains[0] if domains else "")
        verdicts = {domain: self._decide(findings, domain) for domain in domains}
        domain, strictest = max(verdicts.items(), key=lambda kv: kv[1].action.severity)
        if len({v.action for v in verdicts.values()}) > 1:
            others = ", ".join(f"{d}: {v.action.value}" for d, v in verdicts.items() if d != domain)
            reason = f"{strictest.reason}; strictest of the recipient domains ({domain}; {others})"
            return replace(strictest, reason=reason)
        return strictest

    def _domain_specific(self, findings: list[Finding], domains: list[str]) -> bool:
        return any(d in self.config.domains for d in domains) or any(
            f.check == "rules" and f.detail.get("domains") for f in findings
        )

    def _decide(self, findings: list[Finding], domain: str) -> Verdict:
        def applies(f: Finding) -> bool:
            scope = f.detail.get("domains") if f.check == "rules" else None
            return not scope or domain in scope

        applicable = [f for f in findings if applies(f)]
        scored = tuple(
            ScoredSymbol(f.symbol, self.score(f), f.check, f.status, f.detail) for f in applicable
        )
        total = round(sum(s.score for s in scored), 3)

        force = self.config.forced_actions
        forced = [(force[s.name], s) for s in scored if s.name in force]
        forced += [
            (Action(s.details["rule_action"]), s)
            for s in scored
            if s.check == "rules" and s.details.get("active") and "rule_action" in s.details
        ]
        if forced:
            action, symbol = max(forced, key=lambda pair: pair[0].severity)
            # A check or rule may suggest the text the client sees (e.g. the virus name).
            reply = symbol.details.get("reply")
            reason = f"forced by {symbol.name}"
            return Verdict(action, total, scored, reason, None if reply is None else str(reply))

        failures = [
            (_ERROR_ACTIONS[self.on_error.get(s.check, "tempfail")], s.check)
            for s in scored
            if s.status is Status.ERROR and self.on_error.get(s.check, "tempfail") in _ERROR_ACTIONS
        ]
        if failures:
            action, check = max(failures, key=lambda pair: pair[0].severity)
            return Verdict(action, total, scored, f"check {check} failed (on_error)")

        action, threshold_name = self.threshold_action(total, domain)
        where = f" for {domain}" if domain in self.config.domains else ""
        return Verdict(action, total, scored, f"score {total}{threshold_name}{where}")

    def threshold_action(self, total: float, domain: str = "") -> tuple[Action, str]:
        """Map a total score to accept, tag, quarantine or reject (per-domain thresholds)."""
        cfg = self.config
        special = cfg.domains.get(domain)
        reject = special.reject if special and special.reject is not None else cfg.reject
        quarantine = (
            special.quarantine if special and special.quarantine is not None else cfg.quarantine
        )
        tag = special.tag if special and special.tag is not None else cfg.tag
        if total >= reject:
            return Action.REJECT, f" >= reject {reject:g}"
        if total >= quarantine:
            return Action.QUARANTINE, f" >= quarantine {quarantine:g}"
        if total >= tag:
            return Action.TAG, f" >= tag {tag:g}"
        return Action.ACCEPT, ""
