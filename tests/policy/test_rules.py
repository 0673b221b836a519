"""The rule language: every condition, composition, monitor mode, per-domain policy, lint."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config import DomainPolicy, PolicyConfig, RulesConfig
from gateway.context import Envelope, ScanContext
from gateway.pipeline import Pipeline, known_symbols
from gateway.policy.rules import RuleSetError, is_lookalike, load_rules
from gateway.policy.rules_schema import json_schema
from gateway.policy.verdict import Policy
from gateway.types import Action, Effect, Finding, Status
from tests.checks.golden import offline_settings
from tests.checks.test_content import PE
from tests.messages import with_attachments, zip_bytes

RULES = Path(__file__).resolve().parents[1] / "data" / "rules"


@pytest.fixture(scope="module")
def ruleset():
    return load_rules([RULES / "basic"], known_symbols([]))


def msg(subject="Hello", body="Just a note.", headers="", sender="Ann <ann@else.test>"):
    return (f"From: {sender}\r\nSubject: {subject}\r\nMessage-ID: <x@else.test>\r\n{headers}"
            f"\r\n{body}\r\n").encode()  # fmt: skip


def hits(ruleset, raw, findings=(), **envelope):
    fields = {"id": "0000000000000000.1", "raw": raw, "mail_from": "x@else.test",
              "rcpts": ("bob@other.test",), "client_ip": "203.0.113.5", "helo": "mx.else.test",
              "tls": "TLSv1.3"}  # fmt: skip
    fields.update(envelope)
    ctx = ScanContext(Envelope(**fields))
    return {h.rule.rule.name: h for h in ruleset.evaluate(ctx, list(findings), explain=True)}


@pytest.mark.parametrize(
    ("rule", "raw", "envelope"),
    [
        ("T_HEADER_EXISTS", msg(headers="X-Campaign: 7\r\n"), {}),
        ("T_HEADER_REGEX", msg(headers="X-Mailer: Super Bulk  Mailer 2\r\n"), {}),
        ("T_HEADER_COUNT", msg(headers="Received: a\r\nReceived: b\r\nReceived: c\r\n"), {}),
        ("T_HEADER_EQUALS", msg(headers="X-Priority: 1\r\n"), {}),
        ("T_FROM_NAME_VIP", msg(sender="Jane Doe <jane.doe@gmail.test>"), {}),
        ("T_FROM_ADDRESS", msg(sender="x@BAD.test"), {}),
        ("T_LOOKALIKE", msg(sender="ceo@examp1e.com"), {}),
        ("T_SENDER", msg(), {"mail_from": "bounce@list.test"}),
        ("T_SENDER", msg(), {"mail_from": "a@mass.test"}),
        ("T_RECIPIENT", msg(), {"rcpts": ("cfo@other.test",)}),
        ("T_RECIPIENT", msg(), {"rcpts": ("x@eu.corp.example.com",)}),
        ("T_CLIENT_IP", msg(), {"client_ip": "192.0.2.44"}),
        ("T_CLIENT_IP", msg(), {"client_ip": "2001:db8::5"}),
        ("T_CLIENT_IP", msg(), {"client_ip": "198.51.100.9"}),
        ("T_HELO", msg(), {"helo": "10.0.0.1"}),
        ("T_NO_TLS", msg(), {"tls": ""}),
        ("T_SIZE", msg(body="x" * 120_000), {}),
        ("T_SUBJECT", msg(subject="Re: WIRE TRANSFER today"), {}),
        ("T_BODY", msg(body="please buy two gift cards"), {}),
        ("T_URL", msg(body="see https://bank.test/login.php?id=1"), {}),
        ("T_URL", msg(body="get it at http://update.zip/now"), {}),
        ("T_ATTACHMENT", with_attachments(("disk.iso", b"CD001", "application/octet-stream")), {}),
        ("T_ATTACHMENT", with_attachments(("a.bin", b"x", "application/x-msdownload")), {}),
    ],
)
def test_each_condition_matches(ruleset, rule, raw, envelope):
    found = hits(ruleset, raw, **envelope)
    assert rule in found
    assert found[rule].reasons  # the explanation names the conditions that matched


def test_conditions_that_do_not_match(ruleset):
    found = hits(ruleset, msg(sender="Jane Doe <jane@example.com>"))  # a VIP from our domain
    assert "T_FROM_NAME_VIP" not in found
    assert "T_LOOKALIKE" not in hits(ruleset, msg(sender="ceo@example.com"))  # the real one
    assert "T_NO_TLS" not in found
    assert "T_CLIENT_IP" not in found


async def test_true_types_and_archive_members_come_from_the_content_check(ruleset):
    settings = offline_settings()
    pipeline = Pipeline.from_settings(
        settings.model_copy(update={"rules": RulesConfig(enabled=False)})
    )
    archive = zip_bytes({"inner/run.exe": PE})
    raw = with_attachments(
        ("report.pdf", PE, "application/pdf"), ("pack.zip", archive, "application/zip")
    )
    ctx = ScanContext(
        Envelope(id="0000000000000000.1", raw=raw, mail_from="a@b.test", rcpts=("c@d.test",))
    )
    result = await pipeline.scan(ctx)
    findings = [Finding(s.check, s.name, s.status, s.details) for s in result.verdict.symbols]
    found = {h.rule.rule.name: h for h in ruleset.evaluate(ctx, findings, explain=True)}
    reasons = " ".join(found["T_ATTACHMENT"].reasons)
    assert "attachment_true_type" in reasons or "archive_member" in reasons
    assert any(f.get("in_archive") for f in ctx.inspected_files)


def test_symbol_details_and_probability(ruleset):
    duplicate = Finding("headers", "HDR_DUPLICATE", Status.FAIL, {"fields": ["From", "Subject"]})
    assert "T_SYMBOL_DETAIL" in hits(ruleset, msg(), [duplicate])
    other = Finding("headers", "HDR_DUPLICATE", Status.FAIL, {"fields": ["From"]})
    assert "T_SYMBOL_DETAIL" not in hits(ruleset, msg(), [other])
    spam = Finding("classifier", "ML_SPAM", Status.FAIL, {"probability": 0.97})
    assert "T_PROBABILITY" in hits(ruleset, msg(), [spam])
    ham = Finding("classifier", "ML_HAM", Status.PASS, {"probability": 0.2})
    assert "T_PROBABILITY" not in hits(ruleset, msg(), [ham])


def test_composition_and_chaining(ruleset):
    found = hits(ruleset, msg(subject="wire transfer", body="and gift cards"))
    assert {"T_SUBJECT", "T_BODY", "T_CHAINED"} <= set(found)
    assert "T_CHAINED" not in hits(ruleset, msg(subject="wire transfer"))


def policy(**domains):
    return Policy(PolicyConfig(domains={k: DomainPolicy(**v) for k, v in domains.items()}), {}, {})


def test_monitor_mode_is_logged_but_does_not_act(ruleset):
    found = hits(ruleset, msg(subject="monitor me"))
    finding = found["T_MONITORED_REJECT"].finding()
    assert finding.status is Status.NEUTRAL
    verdict = policy().decide([finding], ["bob@other.test"])
    assert verdict.action is Action.ACCEPT
    assert verdict.score == 0
    assert verdict.symbol_names == ("T_MONITORED_REJECT",)  # still recorded


def test_forced_action_with_reply(ruleset):
    finding = hits(ruleset, msg(subject="please reject me"))["T_FORCE_REJECT"].finding()
    verdict = policy().decide([finding], ["bob@other.test"])
    assert verdict.action is Action.REJECT
    assert verdict.reply_text == "Go away"
    assert verdict.reason == "forced by T_FORCE_REJECT"


def test_per_domain_policy_takes_the_strictest_and_says_why(ruleset):
    rcpts = ("a@strict.test", "b@relaxed.test")
    finding = hits(ruleset, msg(subject="monthly newsletter"), rcpts=rcpts)[
        "T_DOMAIN_SCOPED"
    ].finding()
    verdict = policy().decide([finding], ["a@strict.test", "b@relaxed.test"])
    assert verdict.action is Action.TAG  # 6 points, only for strict.test
    assert (
        "strictest of the recipient domains (strict.test; relaxed.test: accept)" in verdict.reason
    )
    assert policy().decide([finding], ["b@relaxed.test"]).action is Action.ACCEPT
    # Per-domain thresholds: 3 points quarantine mail to vip.test, only tag elsewhere.
    weight = Finding("rules", "X_RULE", Status.FAIL, {"mode": "active"}, Effect(score=6.0))
    tight = policy(**{"vip.test": {"quarantine": 3, "reject": 20}})
    verdict = tight.decide([weight], ["a@vip.test", "b@other.test"])
    assert verdict.action is Action.QUARANTINE
    assert "for vip.test" in verdict.reason


def test_linter_reports_every_problem_with_its_line():
    with pytest.raises(RuleSetError) as error:
        load_rules([RULES / "broken"], known_symbols([]))
    text = str(error.value)
    expected = {
        8: "bad_name: name",
        13: "bad regex",
        19: "unknown symbol 'SPF_FIAL' (hint: did you mean 'SPF_FAIL'?)",
        25: "duplicate rule name GOOD_ONE",
        35: "EXTRA_FIELD: colour: Extra inputs are not permitted",
        38: "a rule needs a score, an action, or both",
        43: "contradictory condition",
        55: "must not contain CR, LF or NUL",
        56: "unknown list 'alow'",
    }
    for line, message in expected.items():
        assert any(
            f"broken.yaml:{line}: error: " in p and message in p for p in text.splitlines()
        ), line


def test_yaml_syntax_error_has_a_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("rules:\n  - name: X\n    when: {unclosed\n")
    with pytest.raises(RuleSetError, match=r"bad\.yaml:\d+: error: YAML"):
        load_rules([tmp_path], set())


def test_contradictory_actions_across_rules(tmp_path):
    rule = (
        "  - {{name: {n}, description: d, owner: o, mode: active, "
        "when: {{subject: x}}, action: {a}}}\n"
    )
    (tmp_path / "r.yaml").write_text(
        "rules:\n" + rule.format(n="RULE_A", a="accept") + rule.format(n="RULE_B", a="reject")
    )
    with pytest.raises(RuleSetError, match="same condition as RULE_A"):
        load_rules([tmp_path], set())


def test_pathological_regex_does_not_hang(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: EVIL_REGEX\n    description: d\n    owner: o\n    mode: active\n"
        "    when: {body: {regex: '(x+x+)+y'}}\n    score: 1\n"
    )
    ruleset = load_rules([tmp_path], set())
    started = time.perf_counter()
    found = hits(ruleset, msg(body="x" * 50_000))
    assert "EVIL_REGEX" not in found
    assert time.perf_counter() - started < 5  # bounded by the regex timeout, not exponential


def test_lookalikes():
    ours = frozenset({"example.com", "paypal.com"})
    assert is_lookalike("examp1e.com", ours)
    assert is_lookalike("exarnple.com", ours)
    assert is_lookalike("exampel.com", ours)  # transposition
    assert is_lookalike("paypa1.com", ours)
    assert not is_lookalike("example.com", ours)
    assert not is_lookalike("totally-different.org", ours)
    assert not is_lookalike("exampl.co", ours)  # two edits (lengths differ by two)
    assert is_lookalike("exampe.com", ours)  # a deletion


def test_schema_export_and_starter_rules_lint():
    schema = json_schema()
    assert schema["title"] == "Mailmoat rule file"
    assert "Rule" in schema["$defs"]
    starter = load_rules([Path(__file__).resolve().parents[2] / "rules"], known_symbols([]))
    names = starter.names
    assert {"LOCAL_ALLOW_SENDER", "EXECUTABLE_ATTACHMENT", "EXECUTIVE_NAME_FROM_OUTSIDE",
            "LOOKALIKE_DOMAIN", "PAYMENT_CHANGE_REQUEST"} <= set(names)  # fmt: skip
    assert all(r.rule.description and r.rule.owner for r in starter.rules)


def test_a_matched_rule_says_why_in_the_finding_without_explain(ruleset):
    """The event of a message shows the conditions that made each rule match (not empty)."""
    ctx = ScanContext(Envelope(id="0000000000000000.1", raw=msg(subject="monthly newsletter"),
                               mail_from="x@else.test", rcpts=("a@strict.test",)))  # fmt: skip
    matched = ruleset.evaluate(ctx, [], explain=False)  # as the gateway runs it
    assert matched
    for hit in matched:
        assert hit.reasons, hit.rule.rule.name
        assert hit.finding().detail["matched"] == hit.reasons[:10]
