"""Headers on delivery: forged copies removed, ours added, body untouched."""

from __future__ import annotations

from gateway.disposition import fold, stamp, verdict_headers
from gateway.types import Action, ScoredSymbol, Status, Verdict


def verdict(action=Action.ACCEPT, n=1):
    symbols = tuple(ScoredSymbol(f"SYMBOL_NUMBER_{i}", 1.0, "c", Status.FAIL, {}) for i in range(n))
    return Verdict(action, float(n), symbols, "score")


def test_forged_headers_removed_including_folded_continuations():
    raw = (
        b"X-Mailmoat-Score: -50\r\n\tcontinued\r\nSubject: s\r\nx-spam-flag: NO\r\n"
        b"\r\nX-Mailmoat-Score: in the body stays\r\n"
    )
    out = stamp(raw, [])
    assert out == b"Subject: s\r\n\r\nX-Mailmoat-Score: in the body stays\r\n"


def test_stamp_tags_and_keeps_body():
    raw = b"Subject: s\r\nX-Spam-Flag: NO\r\n\r\nbody\r\n"
    out = stamp(raw, verdict_headers(verdict(Action.TAG), "0000000000000000.1"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert b"X-Spam-Flag: YES" in head
    assert b"X-Spam-Flag: NO" not in head
    assert b"X-Mailmoat-Id: 0000000000000000.1" in head


def test_long_symbol_lists_are_folded_and_bounded():
    out = stamp(b"Subject: s\r\n\r\nb", verdict_headers(verdict(n=200), "0000000000000000.1"))
    head = out.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert b", ..." in head


def test_fold_strips_newlines():
    assert b"\n" not in fold("X-A", "a\r\nInjected: yes").rstrip(b"\r\n")
