"""The headers check on golden messages and on edge cases."""

from __future__ import annotations

import pytest

from tests.checks.golden import EXPECTED, MESSAGES, scan_bytes, symbols_with_prefix

PREFIXES = ("HDR_", "MIME_")


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_golden_message(name):
    verdict = await scan_bytes((MESSAGES / name).read_bytes())
    expected = {s for s in EXPECTED[name] if s.startswith(PREFIXES)}
    assert symbols_with_prefix(verdict, PREFIXES) == expected


async def test_details_name_the_offending_values():
    verdict = await scan_bytes((MESSAGES / "duplicate-headers.eml").read_bytes())
    [dup] = [s for s in verdict.symbols if s.name == "HDR_DUPLICATE"]
    assert dup.details["fields"] == ["From", "Subject"]
    assert dup.score == 2.0


async def test_smtputf8_allows_8bit_headers():
    raw = (MESSAGES / "eightbit-and-junk-line.eml").read_bytes()
    verdict = await scan_bytes(raw, mail_options=("SMTPUTF8", "BODY=8BITMIME"))
    assert "HDR_8BIT_UNENCODED" not in verdict.symbol_names


async def test_empty_message_gets_findings_not_an_error():
    verdict = await scan_bytes(b"")
    assert {"HDR_MISSING_FROM", "HDR_MISSING_DATE"} <= set(verdict.symbol_names)
    assert not any(name.endswith("_ERROR") for name in verdict.symbol_names)


async def test_folded_header_is_not_a_malformed_line():
    raw = (
        b"From: a@sender.test\r\nSubject: a long\r\n  folded subject\r\n"
        b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <f@sender.test>\r\n\r\nbody\r\n"
    )
    verdict = await scan_bytes(raw)
    assert symbols_with_prefix(verdict, PREFIXES) == set()
