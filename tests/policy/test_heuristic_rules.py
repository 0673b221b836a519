"""The shipped heuristic rules (rules/heuristics.yaml): each fires on its case, not beside it.

Every case goes through the real pipeline with the shipped rules, so the rule sees the
heuristics check's symbols exactly as at the gateway.
"""

from __future__ import annotations

import pytest

from gateway.config import PROJECT_ROOT
from tests.checks.golden import offline_settings, scan_bytes

RULE_NAMES = (
    "CREDENTIAL_FORM_IN_BODY",
    "DECEPTIVE_LINK_WITH_LURE",
    "LOOKALIKE_LINK_HOST",
    "OBFUSCATED_LURE",
    "SHORTENED_LINK_WITH_LURE",
    "DISPLAY_NAME_ADDRESS_SPOOF",
    "IMAGE_ONLY_WITH_HIDDEN_LINK",
    "HIDDEN_TEXT_WITH_TRICKS",
)


def html(body: str, subject: str = "Hello", sender: str = "Alice <alice@sender.test>") -> bytes:
    return (
        f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <r1@sender.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n<html><body>{body}</body></html>\r\n"
    ).encode()


TEXT = "<p>Hello Bob, here is the note about next week's meeting and the agenda.</p>"
HIDDEN = "<div style='display:none'>" + "weather garden river " * 12 + "</div>"

# (rule, the case it must catch, the near miss it must leave alone)
CASES = [
    ("CREDENTIAL_FORM_IN_BODY",
     html(TEXT + "<form action='http://x.test/'><input type='Password' name=p></form>"),
     html(TEXT + "<form action='http://x.test/'>Log in to search: <input name=q></form>")),
    ("CREDENTIAL_FORM_IN_BODY",
     html("<p>Confirm your card number and CVV</p><form><input name=c></form>"),
     html("<p>Pick your seat</p><form><input name=c></form>")),
    ("DECEPTIVE_LINK_WITH_LURE",
     html("<a href='http://login.evil.test/'>https://www.bank.example/</a>" + TEXT,
          subject="Verify your account"),
     html("<a href='http://click.news.test/'>www.shop.example</a>" + TEXT,
          subject="This week's offers")),
    ("LOOKALIKE_LINK_HOST",
     html("<a href='http://xn--pypal-4ve.com/'>log in</a>" + TEXT),
     html("<a href='http://xn--mnchen-3ya.de/'>M\u00fcnchen</a>" + TEXT)),
    ("OBFUSCATED_LURE",
     html("<p>Your acc\u200bou\u200bnt payment is on h\u200bold</p>" + TEXT),
     html("<p>Meeting notes: Pav\u200bel, Ol\u200bga and Iv\u200ban</p>" + TEXT)),
    ("SHORTENED_LINK_WITH_LURE",
     html("<a href='https://bit.ly/3xYz'>track</a>" + TEXT, subject="Your parcel is waiting"),
     html("<a href='https://bit.ly/3xYz'>slides</a>" + TEXT, subject="Slides from today")),
    ("DISPLAY_NAME_ADDRESS_SPOOF",
     html(TEXT, sender='"support@bank.example" <x@evil.test>'),
     html(TEXT, sender='"alice@sender.test" <alice@sender.test>')),
    ("IMAGE_ONLY_WITH_HIDDEN_LINK",
     html("<a href='https://bit.ly/9'><img src='cid:offer'></a>"),
     html("<a href='https://shop.example/'><img src='cid:offer'></a>")),
    ("HIDDEN_TEXT_WITH_TRICKS",
     html(HIDDEN + "<a href='http://192.0.2.9/'><img src='cid:x'></a>"),
     html(HIDDEN + TEXT)),
]  # fmt: skip


def shipped_rules():
    settings = offline_settings()
    rules = settings.rules.model_copy(update={"enabled": True, "paths": [PROJECT_ROOT / "rules"]})
    return settings.model_copy(update={"rules": rules})


def test_every_heuristic_rule_has_a_case():
    assert sorted({rule for rule, _, _ in CASES}) == sorted(RULE_NAMES)


@pytest.mark.parametrize(("rule", "caught", "missed"), CASES, ids=[c[0] for c in CASES])
async def test_rule_fires_on_its_case_and_not_on_the_near_miss(rule, caught, missed):
    settings = shipped_rules()
    hit = await scan_bytes(caught, settings)
    assert rule in hit.symbol_names, hit.symbol_names
    [symbol] = [s for s in hit.symbols if s.name == rule]
    assert symbol.details["matched"]  # says why
    miss = await scan_bytes(missed, settings)
    assert rule not in miss.symbol_names, miss.symbol_names
