"""The protocol check: bare line endings, NUL, undeclared 8-bit, null sender."""

from __future__ import annotations

import pytest

from tests.checks.golden import EXPECTED, MESSAGES, scan_bytes, symbols_with_prefix


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_golden_message(name):
    verdict = await scan_bytes((MESSAGES / name).read_bytes())
    expected = {s for s in EXPECTED[name] if s.startswith("PROTO_")}
    assert symbols_with_prefix(verdict, ("PROTO_",)) == expected


async def test_counts_are_in_details():
    verdict = await scan_bytes((MESSAGES / "bare-newlines.eml").read_bytes())
    details = {s.name: s.details for s in verdict.symbols}
    assert details["PROTO_BARE_LF"] == {"count": 2}
    assert details["PROTO_BARE_CR"] == {"count": 1}


async def test_8bit_without_8bitmime_is_flagged():
    raw = (MESSAGES / "clean.eml").read_bytes().replace(b"noon.", b"noon \xc3\xa9.")
    assert "PROTO_8BIT_UNDECLARED" in (await scan_bytes(raw, mail_options=())).symbol_names
    assert "PROTO_8BIT_UNDECLARED" not in (await scan_bytes(raw)).symbol_names


async def test_null_sender_is_noted_with_no_weight():
    verdict = await scan_bytes((MESSAGES / "clean.eml").read_bytes(), mail_from="")
    [empty] = [s for s in verdict.symbols if s.name == "PROTO_EMPTY_SENDER"]
    assert empty.score == 0.0
