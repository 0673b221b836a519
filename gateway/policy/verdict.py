"""Turn findings into a Verdict: forced actions, then the error policy, then thresholds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
        weight = self.weights.get(finding.symbol, 0.0)
        # A check may scale its symbol's weight (0..1), e.g. by the model's probability.
        factor = finding.detail.get("factor")
        if isinstance(factor, int | float):
            weight *= min(1.0, max(0.0, float(factor)))
        return round(weight, 3)

    def decide(self, findings: Iterable[Finding]) -> Verdict:
        """Apply, in order: forced actions, the error policy, the score thresholds."""
        scored = tuple(
            ScoredSymbol(f.symbol, self.score(f), f.check, f.status, f.detail) for f in findings
        )
        total = round(sum(s.score for s in scored), 3)

        force = self.config.forced_actions
        forced = [(force[s.name], s) for s in scored if s.name in force]
        if forced:
            action, symbol = max(forced, key=lambda pair: pair[0].severity)
            # A check may suggest the text the client sees (e.g. the virus name).
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

        return Verdict(self.threshold_action(total), total, scored, f"score {total}")

    def threshold_action(self, total: float) -> Action:
        """Map a total score to accept, tag, quarantine or reject."""
        cfg = self.config
        if total >= cfg.reject:
            return Action.REJECT
        if total >= cfg.quarantine:
            return Action.QUARANTINE
        if total >= cfg.tag:
            return Action.TAG
        return Action.ACCEPT
