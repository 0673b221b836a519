"""Policy order: forced actions, then the error policy, then thresholds."""

from __future__ import annotations

import pytest

from gateway.config import PolicyConfig
from gateway.policy.verdict import Policy
from gateway.types import Action, Effect, Finding, Status


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


# --- forces and floors: an allow lowers the score, never a floor ------------------------

ALLOW = Finding("rules", "ALLOW", Status.FAIL, {}, Effect(score=-5.0, force=Action.ACCEPT))


def floors_policy():
    return Policy(
        config=PolicyConfig(),  # the built-in force: VIRUS_FOUND, DMARC_POLICY_*, ATTACHMENT_BANNED
        weights={"SPAMMY": 12.0, "VIRUS_FOUND": 20.0, "DMARC_POLICY_REJECT": 5.0},
        on_error={"antivirus": "tempfail", "optional": "accept"},
    )


@pytest.mark.parametrize(
    ("finding", "expected"),
    [
        (Finding("antivirus", "VIRUS_FOUND", Status.FAIL), Action.REJECT),
        (Finding("antivirus", "AV_FAIL", Status.ERROR), Action.TEMPFAIL),
        (Finding("content", "ATTACHMENT_BANNED", Status.FAIL), Action.QUARANTINE),
        (Finding("content", "ARCHIVE_BOMB", Status.FAIL, {}, Effect(least=Action.QUARANTINE)),
         Action.QUARANTINE),
        (Finding("auth", "DMARC_POLICY_REJECT", Status.FAIL), Action.REJECT),
        (Finding("auth", "AUTH_TEMPFAIL", Status.TEMPERROR, {}, Effect(least=Action.TEMPFAIL)),
         Action.TEMPFAIL),
        # What an allow may do: lower a score, and accept over the thresholds.
        (Finding("c", "SPAMMY", Status.FAIL), Action.ACCEPT),
        # A check whose on_error is "accept" sets no floor.
        (Finding("optional", "OPTIONAL_ERROR", Status.ERROR), Action.ACCEPT),
    ],
)  # fmt: skip
def test_a_forced_accept_never_lowers_a_floor(finding, expected):
    verdict = floors_policy().decide([finding, ALLOW])
    assert verdict.action is expected, verdict.reason
    # The order of findings does not matter.
    assert floors_policy().decide([ALLOW, finding]).action is expected


def test_the_floor_that_decides_gives_its_reply_and_reason():
    virus = Finding("antivirus", "VIRUS_FOUND", Status.FAIL, {}, Effect(reply="Virus found: X"))
    verdict = floors_policy().decide([ALLOW, virus])
    assert (verdict.action, verdict.reply_text) == (Action.REJECT, "Virus found: X")
    assert verdict.reason == "forced by VIRUS_FOUND"
    bomb = Finding("content", "ARCHIVE_BOMB", Status.FAIL, {}, Effect(least=Action.QUARANTINE))
    assert floors_policy().decide([ALLOW, bomb]).reason == "at least quarantine by ARCHIVE_BOMB"


def test_strictest_force_wins_and_least_raises_never_lowers():
    deny = Finding("rules", "DENY", Status.FAIL, {}, Effect(force=Action.REJECT))
    assert floors_policy().decide([ALLOW, deny]).action is Action.REJECT
    least = Finding("rules", "HOLD", Status.FAIL, {}, Effect(least=Action.QUARANTINE))
    assert floors_policy().decide([least]).action is Action.QUARANTINE
    # A score past reject stays reject: least only raises.
    assert floors_policy().decide([least, hit("SPAMMY"), hit("SPAMMY")]).action is Action.REJECT


def test_effects_are_typed_the_policy_ignores_detail_keys():
    # The keys the policy used to read from detail do nothing now: only Effect counts.
    sneaky = Finding(
        "rules",
        "SNEAKY",
        Status.FAIL,
        {"rule_score": -50.0, "rule_action": "accept", "active": True, "factor": 0.0},
    )
    verdict = floors_policy().decide([sneaky, hit("SPAMMY")])
    assert verdict.action is Action.QUARANTINE
    assert verdict.score == 12.0


def test_a_scoped_effect_applies_to_its_recipient_domains_only():
    scoped = Finding(
        "rules", "HOLD_FINANCE", Status.FAIL, {},
        Effect(least=Action.QUARANTINE, domains=frozenset({"finance.test"})),
    )  # fmt: skip
    p = floors_policy()
    assert p.decide([scoped], ["a@other.test"]).action is Action.ACCEPT
    verdict = p.decide([scoped], ["a@other.test", "b@finance.test"])
    assert verdict.action is Action.QUARANTINE
    assert "finance.test" in verdict.reason
