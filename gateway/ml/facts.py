"""Facts about a message that hold wherever it was collected: URL, HTML and text tricks.

A model that learns words learns its corpus (its years, lists and people); these facts are
what spam does to get past filters and fool readers, and they mean the same in any mail
stream: a link whose text names one domain and whose target is another, an IP address for a
host, a shortener, a look-alike internationalised name, text hidden by style, an image in
place of text, a form in the body, letters swapped for digits or for look-alike letters of
another script, invisible characters inside words. Each fact is a name (the heuristics
check's symbol and a ``fact:`` token of the model) with a small JSON detail.

Everything here is linear in the text it is given (bounded by the feature limits).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.dmarc import organizational_domain
from gateway.ml.html import HtmlDoc

FACTS: dict[str, str] = {
    "URL_IP_LITERAL": "A link to a bare IP address instead of a host name",
    "URL_USERINFO": "A link with user@ before the host (http://bank.example@other.example/)",
    "URL_TEXT_MISMATCH": "A link whose text names another domain than its target",
    "URL_SHORTENER": "A link through a URL shortener (the target is hidden)",
    "URL_PUNYCODE": "A link to an internationalised (punycode) host name",
    "URL_MIXED_SCRIPT": "A host name mixing Latin with Cyrillic or Greek letters (look-alike)",
    "URL_MANY_DOMAINS": "Links to many different domains",
    "HTML_HIDDEN_TEXT": "Much text hidden by style (display:none, zero font size...)",
    "HTML_TINY_FONT": "Text in a 1-2 pixel font",
    "HTML_IMAGE_ONLY": "HTML with images and almost no text",
    "HTML_FORM": "A form in the message body (credentials asked for in the mail itself)",
    "HTML_SCRIPT": "A script in the message body",
    "TEXT_ZERO_WIDTH": "Invisible zero-width characters in the text",
    "TEXT_MIXED_SCRIPT": "Words mixing Latin with Cyrillic or Greek look-alike letters",
    "TEXT_LEET": "Lure words with digits or symbols for letters (v1agra, p@ypal)",
    "FROM_NAME_HAS_ADDRESS": "The From display name holds an address of another domain",
}

SHORTENERS = frozenset((
    "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
    "rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "rb.gy", "s.id", "bit.do", "t.ly",
    "v.gd", "qr.ae", "lnkd.in", "adf.ly", "shorte.st", "bl.ink", "soo.gd", "clck.ru", "u.to",
    "x.co", "tr.im", "snipurl.com", "short.io", "t2m.io",
))  # fmt: skip
MANY_DOMAINS = 10  # distinct registrable link domains
HIDDEN_CHARS = 200  # hidden characters (a newsletter's hidden preheader is shorter)
TINY_CHARS = 50
IMAGE_ONLY_WORDS = 10  # fewer words than this beside an image: image-only
ZERO_WIDTH = 3
MAX_LISTED = 5  # examples kept in a fact's detail
MAX_NAME = 200  # characters of a From display name searched for an address

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u180e\u034f]")
_WORD = re.compile(r"\w{3,40}")
_LEET_WORD = re.compile(r"(?<![\w@$|!])[a-z0-9@$|!]{4,20}(?![\w@$|!])", re.IGNORECASE)
_LEET = str.maketrans("0134578@$!|", "oieastbasil")
_LEET_L = str.maketrans("0134578@$!|", "oleastbasll")
LURE_WORDS = frozenset((
    "viagra", "cialis", "levitra", "pharmacy", "casino", "password", "account", "verify",
    "verification", "bank", "paypal", "bitcoin", "crypto", "lottery", "winner", "prize", "free",
    "money", "cash", "credit", "loan", "mortgage", "porn", "sex", "dating", "offer", "urgent",
    "invoice", "refund", "login", "security", "amazon", "apple", "microsoft", "netflix",
    "wallet", "payment",
))  # fmt: skip
_LINK_TEXT_HOST = re.compile(
    r"^(?:https?://)?(?:[\w-]+\.)+[a-z]{2,24}(?:[/:?#]\S*)?$", re.IGNORECASE
)
_ADDRESS = re.compile(r"[\w.+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def url_host(url: str) -> str:
    """The lower-cased host of a link ("www.x" counts as http://www.x), or ""."""
    if url.lower().startswith("www."):
        url = "http://" + url
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def is_ip_host(host: str) -> bool:
    """Whether a link's host is an IP address ([v6] in brackets, or a decimal number)."""
    host = host.strip("[]")
    if host.isdigit():  # http://3232235777/ is 192.168.1.1
        return len(host) >= 8
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _scripts(word: str) -> set[str]:
    """The scripts (LATIN, CYRILLIC, GREEK...) of a word's letters."""
    scripts = set()
    for char in word:
        if char.isascii():
            if char.isalpha():
                scripts.add("LATIN")
        elif char.isalpha():
            scripts.add(unicodedata.name(char, "UNKNOWN").split(" ")[0])
    return scripts


def _mixed(word: str) -> bool:
    scripts = _scripts(word)
    return "LATIN" in scripts and bool(scripts & {"CYRILLIC", "GREEK"})


def _decoded_host(host: str) -> str:
    try:
        return host.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return host


def url_facts(
    urls: Sequence[str], hosts: Sequence[str], anchors: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """URL_* facts of a message's links, their hosts (``url_host``, empty ones left out)
    and anchors."""
    facts: dict[str, Any] = {}
    ips = sorted({h for h in hosts if is_ip_host(h)})
    if ips:
        facts["URL_IP_LITERAL"] = {"hosts": ips[:MAX_LISTED]}
    userinfo = [u for u in urls if u.lower().startswith("http") and _userinfo(u)]
    if userinfo:
        facts["URL_USERINFO"] = {"urls": [u[:200] for u in userinfo[:MAX_LISTED]]}
    short = sorted({h for h in hosts if h in SHORTENERS or h.removeprefix("www.") in SHORTENERS})
    if short:
        facts["URL_SHORTENER"] = {"hosts": short[:MAX_LISTED]}
    idn = sorted({h for h in hosts if "xn--" in h or not h.isascii()})
    if idn:
        facts["URL_PUNYCODE"] = {"hosts": idn[:MAX_LISTED]}
        mixed = [d for d in map(_decoded_host, idn) if any(map(_mixed, d.split(".")))]
        if mixed:
            facts["URL_MIXED_SCRIPT"] = {"hosts": mixed[:MAX_LISTED]}
    domains = {organizational_domain(h) for h in hosts if not is_ip_host(h)}
    if len(domains) >= MANY_DOMAINS:
        facts["URL_MANY_DOMAINS"] = {"count": len(domains)}
    mismatched = []
    for href, text in anchors:
        target = url_host(href) if href.lower().startswith(("http", "www.")) else ""
        if not target or not _LINK_TEXT_HOST.match(text):
            continue
        named = url_host(text if "://" in text else "http://" + text)
        if named and organizational_domain(named) != organizational_domain(target):
            mismatched.append({"text": text[:100], "target": target})
    if mismatched:
        facts["URL_TEXT_MISMATCH"] = {"links": mismatched[:MAX_LISTED]}
    return facts


def _userinfo(url: str) -> bool:
    try:
        return urlsplit(url).username is not None
    except ValueError:
        return False


def html_facts(docs: Sequence[HtmlDoc], words: int) -> dict[str, Any]:
    """HTML_* facts of a message's HTML body parts; ``words``: words of text in the message."""
    facts: dict[str, Any] = {}
    if not docs:
        return facts
    hidden = sum(d.hidden_chars for d in docs)
    if hidden >= HIDDEN_CHARS:
        facts["HTML_HIDDEN_TEXT"] = {"chars": hidden}
    tiny = sum(d.tiny_chars for d in docs)
    if tiny >= TINY_CHARS:
        facts["HTML_TINY_FONT"] = {"chars": tiny}
    images = sum(d.tags.count("img") for d in docs)
    if images and words < IMAGE_ONLY_WORDS:
        facts["HTML_IMAGE_ONLY"] = {"images": images, "words": words}
    if any("form" in d.tags or "input" in d.tags for d in docs):
        facts["HTML_FORM"] = {"asks_password": any(d.password_fields for d in docs)}
    if any(d.scripts for d in docs):
        facts["HTML_SCRIPT"] = {}
    return facts


def text_facts(text: str) -> dict[str, Any]:
    """TEXT_* facts of the subject and visible text."""
    facts: dict[str, Any] = {}
    zero_width = len(_ZERO_WIDTH.findall(text))
    if zero_width >= ZERO_WIDTH:
        facts["TEXT_ZERO_WIDTH"] = {"count": zero_width}
    if not text.isascii():
        mixed = sorted({w for w in _WORD.findall(text) if not w.isascii() and _mixed(w)})
        if mixed:
            facts["TEXT_MIXED_SCRIPT"] = {"words": mixed[:MAX_LISTED]}
    leet = []
    for word in _LEET_WORD.findall(text):
        if word.isalpha() or word.isdigit() or sum(c.isalpha() for c in word) < 2:
            continue
        low = word.lower()
        if low.translate(_LEET) in LURE_WORDS or low.translate(_LEET_L) in LURE_WORDS:
            leet.append(word)
    if leet:
        facts["TEXT_LEET"] = {"words": sorted(set(leet))[:MAX_LISTED]}
    return facts


def from_name_facts(names_and_domains: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """FROM_NAME_HAS_ADDRESS: "support@bank.example" <x@other.example>."""
    for name, domain in names_and_domains:
        match = _ADDRESS.search(name[:MAX_NAME])  # bounded: the search is quadratic in it
        if (
            match
            and domain
            and organizational_domain(match.group(1)) != organizational_domain(domain)
        ):
            return {"FROM_NAME_HAS_ADDRESS": {"name": name[:100], "domain": domain}}
    return {}
