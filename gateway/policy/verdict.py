"""Turn findings into a Verdict: score, forces, then floors that nothing may lower.

The order (docs/architecture.md, "How a verdict is made"):

1. **Score.** Each finding weighs its configured weight (scaled by its effect's ``factor``,
   or times the model's log-odds for a ``per_log_odds`` entry) or its effect's own ``score``
   (a rule, unless the scores file weighs the rule's name); error findings weigh 0. The
   total maps to accept / tag / quarantine / reject by the thresholds.
2. **Forces.** A ``force`` effect (a rule's ``action``) or a ``[policy] force`` entry sets the
   action instead of the thresholds; among several, the strictest wins. This is how an
   allow rule says "accept" and a deny rule says "reject".
3. **Floors.** What must hold whatever was forced: a ``least`` effect (a rule's ``least``,
   uninspectable content, a DNS temperror for a domain that enforces DMARC), a
   ``[policy] force`` entry (a virus, a DMARC reject the site enforces, a banned
   attachment), and a failing check's ``on_error``. The final action is the strictest of
   step 2 and every floor, so an allow can lower the score but never lift a virus, a
   failing check or an uninspectable attachment over the line.

Effects are typed (``Effect``); the policy never reads a finding's ``detail``. An effect with
``domains`` applies only to mail for those recipient domains, and thresholds may be set per
domain in [policy.domains]: a message to several domains is decided for each and takes the
strictest outcome, and the reason says which domain decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

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
    # Symbols whose weight is points per unit of the model's log-odds above an offset
    # (learned scores): symbol -> offset.
    per_log_odds: Mapping[str, float] = field(default_factory=dict)

    def score(self, finding: Finding) -> float:
        """The weight of a finding. Error symbols weigh 0: an outage is not evidence of spam."""
        if finding.status is Status.ERROR:
            return 0.0
        effect = finding.effect
        if effect.score is not None:
            learned = finding.check == "rules" and finding.status is Status.FAIL
            if learned and finding.symbol in self.weights:  # a scores file entry for a rule
                return round(self.weights[finding.symbol], 3)
            return round(effect.score, 3)
        weight = self.weights.get(finding.symbol, 0.0)
        if finding.symbol in self.per_log_odds and effect.log_odds is not None:
            return round(weight * (effect.log_odds - self.per_log_odds[finding.symbol]), 3)
        if effect.factor is not None:
            weight *= min(1.0, max(0.0, effect.factor))
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
            f.effect.domains for f in findings
        )

    def _decide(self, findings: list[Finding], domain: str) -> Verdict:
        applicable = [f for f in findings if not f.effect.domains or domain in f.effect.domains]
        scored = tuple(
            ScoredSymbol(f.symbol, self.score(f), f.check, f.status, f.detail, f.effect)
            for f in applicable
        )
        total = round(sum(s.score for s in scored), 3)

        # 1. The thresholds.
        action, threshold_name = self.threshold_action(total, domain)
        where = f" for {domain}" if domain in self.config.domains else ""
        reason, reply = f"score {total}{threshold_name}{where}", None

        # 2. Forces replace the thresholds' answer; the strictest force wins.
        configured = self.config.forced_actions
        forces = [(configured[s.name], s) for s in scored if s.name in configured]
        forces += [(s.effect.force, s) for s in scored if s.effect.force is not None]
        if forces:
            action, symbol = max(forces, key=lambda pair: pair[0].severity)
            reason, reply = f"forced by {symbol.name}", symbol.effect.reply

        # 3. Floors: the strictest of them holds whatever was forced or scored.
        floors: list[tuple[Action, str, str | None]] = [
            (configured[s.name], f"forced by {s.name}", s.effect.reply)
            for s in scored
            if s.name in configured
        ]
        floors += [
            (s.effect.least, f"at least {s.effect.least.value} by {s.name}", s.effect.reply)
            for s in scored
            if s.effect.least is not None
        ]
        for s in scored:
            on_error = self.on_error.get(s.check, "tempfail")
            if s.status is Status.ERROR and on_error in _ERROR_ACTIONS:
                reason = f"check {s.check} failed (on_error)"
                floors.append((_ERROR_ACTIONS[on_error], reason, None))
        if floors:
            floor, floor_reason, floor_reply = max(floors, key=lambda f: f[0].severity)
            if floor.severity > action.severity:
                action, reason, reply = floor, floor_reason, floor_reply
        return Verdict(action, total, scored, reason, reply)

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
