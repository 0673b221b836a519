"""Every SMTP reply Mailmoat sends, with its enhanced status code (RFC 3463)."""

from __future__ import annotations

import re

S220_GREETING_IDENT = "Mailmoat ESMTP"
S221_BYE = "221 2.0.0 Bye"
S250_OK = "250 2.0.0 OK"
S250_SENDER_OK = "250 2.1.0 Sender OK"
S250_RCPT_OK = "250 2.1.5 Recipient OK"
S250_QUEUED = "250 2.0.0 OK: queued as {id}"

S421_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
S421_TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from your address, try again later"
S421_TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
S421_CLOSING = "421 4.7.0 Closing connection"  # for commands read after a final reply
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
S451_INTERNAL = "451 4.3.0 Internal error, try again later"
S451_BACKEND_DOWN = "451 4.4.1 Mail store unavailable, try again later"
S451_BACKEND_LOST = "451 4.4.2 Connection to the mail store lost, try again later"
S451_STORE_FAILED = "451 4.3.0 Could not store the message, try again later [{id}]"
S451_TEMPFAIL = "451 4.7.1 Message could not be checked now, try again later [{id}]"
S452_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
S454_AUTH_LIMITED = "454 4.7.0 Too many failed authentications, try again later"
S451_RATE_LIMITED = "451 4.7.28 Too much mail {what}: try again later [{id}]"
S451_GREYLISTED = "451 4.7.1 Greylisted: please try again in {wait} seconds [{id}]"
S550_UNKNOWN_USER = "550 5.1.1 Recipient address rejected: no such user here"
S550_RELAY_DENIED = "550 5.7.1 Relaying denied: this gateway does not accept mail for that domain"
S554_REJECTED = "554 5.7.1 Message rejected by policy [{id}]"
S550_BARE_NEWLINE = "550 5.5.2 Bare CR or LF in message data (RFC 5321 2.3.8) [{id}]"
S552_TOO_BIG = "552 5.3.4 Message size exceeds the limit of {limit} bytes"
S553_NO_SMTPUTF8 = "553 5.6.7 The mail store does not support SMTPUTF8"
S553_BAD_ADDRESS = "553 5.1.3 Malformed address"

# Replies with which aiosmtpd refuses message data before our handler sees it.
DATA_REFUSALS = ("552 5.3.4", "500 5.5.2 Line too long")

# aiosmtpd's own replies that lack an enhanced status code or leak internals, and ours.
_TRANSLATIONS = {
    "250 OK": S250_OK,
    "221 Bye": S221_BYE,
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds the limit",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds the limit"
    ),
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: bad syntax": "500 5.5.2 Syntax error",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Nested MAIL command",
    "553 5.1.3 Error: malformed address": S553_BAD_ADDRESS,
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
}
_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# Enhanced codes for aiosmtpd's other stock replies, by reply code (RFC 3463).
_DEFAULT_ENHANCED = {
    "250": "2.0.0",
    "252": "2.0.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_STOCK = re.compile(r"^(\d{3}) (?:Error: )?(.*)$")


def translate(status: str) -> str:
    """Give aiosmtpd's stock replies an enhanced status code and no internals.

    The greeting, 354, and EHLO lines are left alone (RFC 2034 exempts them).
    """
    if status in _TRANSLATIONS:
        return _TRANSLATIONS[status]
    if status == "250 HELP" or "\r\n" in status or has_enhanced_code(status):
        return status
    match = _STOCK.match(status)
    if match is None or match.group(1) not in _DEFAULT_ENHANCED:
        return status
    code, text = match.groups()
    if code == "552":
        return "552 5.3.4 Message size exceeds the limit"
    return f"{code} {_DEFAULT_ENHANCED[code]} {text}"


def format_reply(code: int, text: str) -> str:
    """A (possibly multi-line) reply from a code and text, with control characters removed.

    Text from the backend or from rule authors must never inject CR/LF into our replies.
    """
    lines = [_CONTROL.sub(" ", line).strip() for line in text.splitlines()] or [""]
    lines = [line for line in lines if line] or [""]
    klass = str(code)[0]
    if not re.match(r"^[245]\.\d{1,3}\.\d{1,3}\b", lines[0]):
        lines[0] = f"{klass}.0.0 {lines[0]}".rstrip()
    head = [f"{code}-{line}" for line in lines[:-1]]
    return "\r\n".join([*head, f"{code} {lines[-1]}"])


def has_enhanced_code(reply: str) -> bool:
    """True when a reply carries an RFC 3463 enhanced status code."""
    return bool(_ENHANCED.match(reply))
