"""Fuzzing (hypothesis) of the parser, the feature function and the rule engine.

Whatever bytes arrive, parsing, feature extraction, every check that needs no service and
the rule engine must return, bounded in time, without an exception. Cases found by the
fuzzer are kept below as regression examples.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
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


FOUND = [
    b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
    b"Subject: =?utf-8?b?////?=\r\n\r\n",
    b"Content-Type: text/plain; charset=utf-99\r\n\r\n\xff\xfe",
    b"\r\n\r\n\r\n",
    b"From: \x00\r\n\r\nx",
    b"X-Mailer: \x0c\r\n\r\n",  # blank mailer: extract() raised IndexError
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
@example(FOUND[0])
@example(FOUND[1])
@example(FOUND[2])
@example(FOUND[3])
@example(FOUND[4])
@example(FOUND[5])
def test_parser_features_and_rules_never_raise(raw: bytes) -> None:
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
