"""Fuzzing (hypothesis) of the parser, the feature function and the rule engine.

Whatever bytes arrive, parsing, feature extraction, every check that needs no service and
the rule engine must return, bounded in time, without an exception. Cases found by the
fuzzer are kept as files in tests/data/fuzz/ and run every time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.context import Envelope, ScanContext
from gateway.message import ParsedMessage
from gateway.ml.features import extract
from gateway.pipeline import known_symbols
from gateway.policy.rules import load_rules
from tests.checks.golden import scan_bytes

RULES = Path(__file__).resolve().parents[1] / "data" / "rules" / "basic"
RULESET = load_rules([RULES], known_symbols([]))

header_names = st.sampled_from(
    ["From", "To", "Subject", "Content-Type", "Content-Transfer-Encoding", "Date",
     "Message-ID", "MIME-Version", "Content-Disposition", "X-Mailer", "Received"]
)  # fmt: skip
header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        'multipart/mixed; boundary="b"', "multipart/alternative; boundary=", "text/html",
        "base64", "quoted-printable", "=?utf-8?b?////?=", "=?bogus-charset?q?x=FF?=",
        'attachment; filename="a.pdf.exe"', "text/plain; charset=utf-99",
    ]),
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b"--b\r\nContent-Type: text/html\r\n\r\n<form><script>x</script>\r\n--b--\r\n"),
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    endings = st.sampled_from([b"\r\n", b"\n", b"\r"])
    head = b"".join(
        f"{name}: {value}".encode("utf-8", "surrogatepass") + draw(endings)
        for name, value in fields
    )
    return head + b"\r\n" + draw(bodies)


FOUND = Path(__file__).resolve().parents[1] / "data" / "fuzz"
FOUND_FILES = sorted(FOUND.glob("*.eml"))
FOUND_CASES = {path.name: path.read_bytes() for path in FOUND_FILES}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_parser_features_and_rules_never_raise(raw: bytes) -> None:
    parse_extract_and_evaluate(raw)


def parse_extract_and_evaluate(raw: bytes) -> None:
    message = ParsedMessage.parse(raw)
    features = extract(message)
    assert isinstance(features.text, str)
    ctx = ScanContext(
        Envelope(id="0000000000000000.1", raw=raw, mail_from="a@b.test", rcpts=("c@d.test",))
    )
    RULESET.evaluate(ctx, [], explain=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
async def test_local_checks_give_a_verdict(raw: bytes) -> None:
    verdict = await scan_bytes(raw)
    assert verdict.action is not None
    assert not any(s.name.endswith("_ERROR") for s in verdict.symbols)  # no check crashed


@pytest.mark.parametrize("name", sorted(FOUND_CASES))
async def test_found_cases_stay_fixed(name: str) -> None:
    raw = FOUND_CASES[name]
    parse_extract_and_evaluate(raw)
    verdict = await scan_bytes(raw)
    assert not any(s.name.endswith("_ERROR") for s in verdict.symbols)


def test_found_cases_are_there() -> None:
    assert len(FOUND_CASES) >= 6
