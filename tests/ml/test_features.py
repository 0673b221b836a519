"""The feature function: what the model sees, and what it must never see."""

from __future__ import annotations

import re

import pytest

from gateway.message import ParsedMessage
from gateway.ml.features import (
    FEATURE_VERSION,
    MAX_TEXT,
    Features,
    extract,
    extract_all,
)
from gateway.ml.html import read_html
from tests.messages import with_attachments

BASE = (
    b"From: Shop <deals@shop.test>\r\nSubject: Cheap pills\r\nMessage-ID: <1@shop.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><script>track()</script><p>Buy <b>now</b> at "
    b"<a href='http://pills.example/buy'>our store</a></p></body></html>\r\n"
)


def features(raw: bytes) -> Features:
    return extract(ParsedMessage.parse(raw))


def test_html_becomes_text_and_links():
    f = features(BASE)
    assert "Buy now at our store" in f.text
    assert "track()" not in f.text
    assert "url:pills.example" in f.tokens
    assert "html:a" in f.tokens
    assert f.text.startswith("Cheap pills\n")


def test_other_filters_verdicts_and_trace_fields_are_not_features():
    noisy = (
        b"Received: from relay.collector.test by mx.collector.test; Tue, 1 Oct 2002\r\n"
        b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=15.2\r\nX-Virus-Scanned: clean\r\n"
        b"X-Mailmoat-Score: 99\r\nAuthentication-Results: other.test; spf=fail\r\n"
        b"Date: Tue, 1 Oct 2002 10:00:00 +0000\r\nTo: zzzz@example.com\r\n"
        b"List-Id: <ilug.linux.ie>\r\nDelivery-Date: Tue, 1 Oct 2002\r\n"
    )
    assert features(noisy + BASE) == features(BASE)


def test_attachments_and_structure():
    raw = with_attachments(("invoice.pdf.exe", b"MZ\x90", "application/octet-stream"))
    f = features(raw)
    assert "attach:ext:exe" in f.tokens
    assert "ctype:multipart/mixed" not in f.tokens  # containers are structure, not parts
    assert any(t.startswith("struct:parts:") for t in f.tokens)


def test_work_is_bounded_on_huge_and_hostile_input():
    huge = b"Subject: big\r\n\r\n" + b"word " * 2_000_000
    f = features(huge)
    assert len(f.text) <= MAX_TEXT + len("big\n")
    many = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n" * 5000
        + b"--x--\r\n"
    )
    assert "struct:bounded" in features(many).tokens
    assert read_html("<p><a href='x'>unclosed <script>").text.strip() == "unclosed"


def test_snapshot_round_trip():
    f = features(BASE)
    assert Features.from_dict(f.to_dict()) == f
    assert f.to_dict()["version"] == FEATURE_VERSION == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "x",
        "  lead",
        "trail \t",
        "a\u00a0b\u2028c\x1cd",
        "\x85 nel \x85",
        "one  two\r\n\r\nthree",
    ],
)
def test_whitespace_squeezed_as_the_regex_does(text):
    from gateway.ml.features import squeeze_whitespace

    assert squeeze_whitespace(text) == re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(
    "text",
    ["no links here", "see HTTP://Example.test/a and www.two.test", "hTTps://x.test", "www"],
)
def test_urls_found_as_the_regex_finds_them(text):
    from gateway.ml.features import _URL, find_urls

    assert find_urls(text) == _URL.findall(text)


def test_the_urls_of_rules_come_from_the_same_pass_and_every_part_whole():
    """Rules and reputation read each part's links and text URLs, in order, from the pass
    that made the features; a URL past the model's text cap is still there for them."""
    late = "x " * MAX_TEXT + "http://late.example/past-the-cap"
    raw = (
        b"From: a@shop.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee http://plain.example/1 and\r\n"
        + late.encode()
        + b"\r\n--b\r\nContent-Type: text/html\r\n\r\n"
        b"<a href='http://html.example/2'>here</a> or http://text-in-html.example/3\r\n"
        b"--b--\r\n"
    )
    extraction = extract_all(ParsedMessage.parse(raw))
    assert extraction.urls == [
        "http://plain.example/1",
        "http://late.example/past-the-cap",
        "http://html.example/2",
        "http://text-in-html.example/3",
    ]
    assert "url:plain.example" in extraction.features.tokens
    assert "url:late.example" not in extraction.features.tokens  # past the model's text
