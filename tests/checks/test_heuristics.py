"""The heuristics check: each URL, HTML and text trick found, and ordinary mail left alone."""

from __future__ import annotations

import time

import pytest

from gateway.config import PROJECT_ROOT, load_scores
from gateway.message import ParsedMessage
from gateway.ml.features import extract_all
from tests.checks.golden import EXPECTED, MESSAGES, scan_bytes

FACT_PREFIXES = ("URL_", "HTML_", "TEXT_", "FROM_NAME_")
HAND_SET = load_scores(PROJECT_ROOT / "config" / "scores-hand.toml")
SHIPPED = load_scores(PROJECT_ROOT / "config" / "scores.toml")


def message(body: str, *, html: bool = True, subject: str = "Hello", sender: str = "") -> bytes:
    ctype = "text/html" if html else "text/plain"
    return (
        f"From: {sender or 'Alice <alice@sender.test>'}\r\nTo: bob@example.test\r\n"
        f"Subject: {subject}\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <h1@sender.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def facts_of(raw: bytes) -> dict[str, dict[str, object]]:
    return extract_all(ParsedMessage.parse(raw)).facts


ORDINARY = "<p>Hi Bob, the minutes of Tuesday's meeting are attached. See you next week.</p>"

CASES = {
    "URL_IP_LITERAL": "<a href='http://192.0.2.7/login'>sign in</a>" + ORDINARY,
    "URL_USERINFO": "<a href='http://www.bank.example@evil.test/x'>bank</a>" + ORDINARY,
    "URL_TEXT_MISMATCH": "<a href='http://evil.test/x'>https://www.bank.example/login</a>"
    + ORDINARY,
    "URL_SHORTENER": "<a href='https://bit.ly/3xYz'>your parcel</a>" + ORDINARY,
    "URL_PUNYCODE": "<a href='http://xn--80ak6aa92e.com/'>apple</a>" + ORDINARY,
    "HTML_HIDDEN_TEXT": ORDINARY + "<div style='display: none'>" + "poison words " * 30 + "</div>",
    "HTML_TINY_FONT": ORDINARY + "<span style='font-size:1px'>" + "tiny words " * 10 + "</span>",
    "HTML_IMAGE_ONLY": "<img src='cid:offer'><p>Click</p>",
    "HTML_FORM": ORDINARY + "<form action='http://evil.test/'><input name='password'></form>",
    "HTML_SCRIPT": ORDINARY + "<script>document.location='http://evil.test/'</script>",
    "TEXT_ZERO_WIDTH": "<p>Your acc\u200bou\u200bnt is sus\u200bpended</p>" + ORDINARY,
    "TEXT_MIXED_SCRIPT": "<p>Your P\u0430yPal account needs attention</p>" + ORDINARY,
    "TEXT_LEET": "<p>Cheap V1AGRA and c1al1s here</p>" + ORDINARY,
}


@pytest.mark.parametrize("symbol", sorted(CASES))
async def test_each_trick_is_found_by_the_check(symbol):
    verdict = await scan_bytes(message(CASES[symbol]))
    found = {name for name in verdict.symbol_names if name.startswith(FACT_PREFIXES)}
    assert found == {symbol}, found
    [hit] = [s for s in verdict.symbols if s.name == symbol]
    assert hit.details == facts_of(message(CASES[symbol]))[symbol]
    assert HAND_SET[symbol].weight > 0  # evidence of spam by hand (learned weights may be 0)
    assert hit.score == SHIPPED[symbol].weight


def test_look_alike_host_is_named_decoded():
    # xn--pypal-4ve.com is "paypal.com" with a Cyrillic letter for the first a
    facts = facts_of(message("<a href='http://xn--pypal-4ve.com/'>log in</a>"))
    assert facts["URL_MIXED_SCRIPT"] == {"hosts": ["p\u0430ypal.com"]}
    assert "URL_PUNYCODE" in facts


def test_details_say_what_was_found():
    facts = facts_of(message(CASES["URL_TEXT_MISMATCH"]))
    assert facts["URL_TEXT_MISMATCH"] == {
        "links": [{"text": "https://www.bank.example/login", "target": "evil.test"}]
    }
    assert facts_of(message(CASES["TEXT_LEET"]))["TEXT_LEET"] == {"words": ["V1AGRA", "c1al1s"]}
    assert facts_of(message("x", sender='"support@bank.example" <x@evil.test>')) == {
        "FROM_NAME_HAS_ADDRESS": {"name": "support@bank.example", "domain": "evil.test"}
    }


def test_ordinary_mail_has_no_facts():
    benign = (
        ORDINARY
        # a newsletter's hidden preheader is short; a link naming its own domain is fine
        + "<div style='display:none'>This week's news</div>"
        + "<a href='https://www.example.org/news'>www.example.org</a>"
        + "<a href='https://news.example.org/a'>example.org</a>"
        + "<p>Call 0800 123 456, see item 4b2 or MP3 player, 24/7 B2B support.</p>"
        + "<p>\u041f\u0440\u0438\u0432\u0435\u0442, Bob! Russian text beside English.</p>"
    )
    assert facts_of(message(benign)) == {}
    assert facts_of(message("Plain text with www.example.org in it.", html=False)) == {}
    assert facts_of(message("x", sender='"Alice (alice@sender.test)" <alice@sender.test>')) == {}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_golden_messages_have_no_tricks(name):
    verdict = await scan_bytes((MESSAGES / name).read_bytes())
    assert not [n for n in verdict.symbol_names if n.startswith(FACT_PREFIXES)]


def test_a_huge_display_name_costs_no_more_than_a_short_one():
    name = "a" * 200_000
    started = time.process_time()
    facts = facts_of(message("x", sender=f'"{name}" <x@evil.test>'))
    assert time.process_time() - started < 2.0  # quadratic in 200,000 would take minutes
    assert facts == {}


def test_the_model_sees_the_facts_as_tokens():
    extraction = extract_all(ParsedMessage.parse(message(CASES["URL_IP_LITERAL"])))
    features, facts = extraction.features, extraction.facts
    assert "fact:URL_IP_LITERAL" in features.tokens
    assert set(facts) == {"URL_IP_LITERAL"}


def test_hidden_text_is_not_model_text():
    features = extract_all(ParsedMessage.parse(message(CASES["HTML_HIDDEN_TEXT"]))).features
    assert "poison" not in features.text
    assert "minutes" in features.text


@pytest.mark.parametrize(
    "markup",
    [
        "<div>" * 8_000 + "deep" + "</div>" * 8_000,
        "<a href='http://a.test/'>" * 3_000 + "x",
        "</span>" * 6_000 + "<span style='display:none'>" * 1_500,
        "<div>" * 250 + "</p>" * 20_000,
        "<p style='" + "font-size:1px;" * 6_000 + "'>x</p>",
    ],
    ids=[
        "deep-nesting",
        "unclosed-anchors",
        "stray-end-tags",
        "unmatched-under-deep",
        "huge-style",
    ],
)
def test_hostile_markup_is_read_in_linear_time(markup):
    def cost(raw: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            facts_of(raw)
            best = min(best, time.process_time() - started)
        return best

    assert len(markup) * 2 < 200_000  # both sizes are read whole (MAX_PART_BYTES)
    one, two = cost(message(markup)), cost(message(markup * 2))
    # Twice the input may not cost much more than twice the time (quadratic would be 4x).
    assert two < one * 3 + 0.01, (one, two)
