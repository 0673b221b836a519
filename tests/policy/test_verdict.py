"""Policy order: forced actions, then the error policy, then thresholds."""

from __future__ import annotations

from gateway.config import PolicyConfig
from gateway.policy.verdict import Policy
from gateway.types import Action, Finding, Status


def policy(force=None, on_error=None):
    return Policy(
        config=PolicyConfig(force=force or {}),
        weights={"A": 3.0, "B": 4.0, "C_ERROR": 99.0},
        on_error=on_error or {},
    )


def hit(symbol, status=Status.FAIL, check="c"):
    return Finding(check, symbol, status)


def test_thresholds():
    p = policy()
    assert p.decide([]).action is Action.ACCEPT
    assert p.decide([hit("A"), hit("B")]).action is Action.TAG
    assert p.decide([hit("A"), hit("B"), hit("A")]).action is Action.QUARANTINE
    assert p.decide([hit("B")] * 4).action is Action.REJECT
    assert p.decide([hit("UNKNOWN")] * 10).score == 0


def test_forced_action_beats_score_and_strictest_wins():
    p = policy(force={"A": Action.ACCEPT, "B": Action.REJECT})
    assert p.decide([hit("A")] * 10).action is Action.ACCEPT
    verdict = p.decide([hit("A"), hit("B")])
    assert verdict.action is Action.REJECT
    assert verdict.reason == "forced by B"


def test_error_weighs_zero_and_follows_on_error():
    p = policy(on_error={"c": "tempfail", "d": "accept", "e": "quarantine"})
    tempfail = p.decide([hit("C_ERROR", Status.ERROR, "c")])
    assert tempfail.action is Action.TEMPFAIL
    assert tempfail.score == 0
    assert p.decide([hit("D_ERROR", Status.ERROR, "d")]).action is Action.ACCEPT
    assert p.decide([hit("E_ERROR", Status.ERROR, "e")]).action is Action.QUARANTINE


def test_force_comes_before_error_policy():
    p = policy(force={"A": Action.REJECT}, on_error={"c": "tempfail"})
    assert p.decide([hit("A"), hit("C_ERROR", Status.ERROR)]).action is Action.REJECT


def test_every_symbol_is_kept_with_its_score():
    verdict = policy().decide([hit("A"), hit("B")])
    assert [(s.name, s.score) for s in verdict.symbols] == [("A", 3.0), ("B", 4.0)]
    assert verdict.score == 7.0
