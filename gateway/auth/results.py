"""The Authentication-Results header (RFC 8601): ours to add, forged ones to remove."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.auth.arc import ArcResult
from gateway.auth.dkim import DkimResult
from gateway.auth.dmarc import DmarcResult
from gateway.auth.spf import SpfResult

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+$")
_COMMENT = re.compile(r"\([^()]*\)")


def _value(text: str) -> str:
    """A property value: a token as is, anything else quoted (RFC 8601 2.2, RFC 2045 5.1)."""
    clean = re.sub(r"[\x00-\x1f\x7f]", "", text)
    if _TOKEN.match(clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(
    authserv_id: str,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult] | None,
    dmarc: DmarcResult | None,
    arc: ArcResult | None,
) -> str:
    """The header value, one method result per clause."""
    clauses = [authserv_id]
    if spf is not None:
        prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
        identity = spf.sender if spf.identity == "mailfrom" else spf.domain
        clauses.append(f"spf={spf.result} {prop}={_value(identity)}")
    if dkim is not None:
        if not dkim:
            clauses.append("dkim=none")
        for sig in dkim:
            reason = f" ({sig.reason})" if sig.reason else ""
            clauses.append(
                f"dkim={sig.result}{_comment(reason)} header.d={_value(sig.domain)} "
                f"header.s={_value(sig.selector)}"
            )
    if dmarc is not None:
        policy = f" (p={dmarc.published_policy})" if dmarc.result in ("pass", "fail") else ""
        clauses.append(f"dmarc={dmarc.result}{policy} header.from={_value(dmarc.from_domain)}")
    if arc is not None:
        clauses.append(f"arc={arc.result}")
    return ";\r\n ".join(clauses)


def _comment(text: str) -> str:
    return re.sub(r"[()\\\r\n]", " ", text.strip(" ()")).join((" (", ")")) if text.strip() else ""


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value (comments and version dropped)."""
    head = _COMMENT.sub(" ", value.split(";", 1)[0])
    parts = head.split()
    return parts[0].lower() if parts else ""


def claims(name: bytes, field: bytes, authserv_id: str) -> bool:
    """Whether a raw header field is an Authentication-Results in ``authserv_id``'s name."""
    if name.lower() != b"authentication-results":
        return False
    value = field.split(b":", 1)[1].decode("utf-8", "replace")
    return authserv_id_of(value) == authserv_id.lower()
