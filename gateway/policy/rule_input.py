"""The message as rules see it: every value a rule may test, computed once per message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from gateway.auth.dmarc import organizational_domain
from gateway.context import ScanContext
from gateway.types import Finding

MAX_TEXT = 100_000  # characters of subject/body a regex may look at


class RuleInput:
    """Values rules test, computed on first use and shared by every rule for one message."""

    def __init__(self, ctx: ScanContext, findings: Sequence[Finding]) -> None:
        self.ctx = ctx
        self.findings = findings

    @cached_property
    def symbols(self) -> dict[str, list[Mapping[str, Any]]]:
        found: dict[str, list[Mapping[str, Any]]] = {}
        for finding in self.findings:
            found.setdefault(finding.symbol, []).append(finding.detail)
        return found

    @cached_property
    def from_addresses(self) -> list[str]:
        return [m.address.lower() for m in self.ctx.message.from_mailboxes]

    @cached_property
    def from_names(self) -> list[str]:
        return [m.display_name for m in self.ctx.message.from_mailboxes if m.display_name]

    @cached_property
    def from_domains(self) -> list[str]:
        return [m.domain for m in self.ctx.message.from_mailboxes if m.domain]

    @cached_property
    def sender(self) -> list[str]:
        return [self.ctx.envelope.mail_from.lower()]

    @cached_property
    def verified_sender(self) -> list[str]:
        """The envelope sender, only when SPF passed for its domain (proof, not a claim)."""
        domain = self.sender_domain[0] if self.sender_domain else ""
        passed = any(
            str(d.get("domain", "")).lower().rstrip(".") == domain
            for d in self.symbols.get("SPF_PASS", [])
        )
        return self.sender if domain and passed else []

    @cached_property
    def verified_from(self) -> list[str]:
        """From addresses whose domain has an aligned DKIM pass or a DMARC pass.

        SpamAssassin's whitelist_auth: a From address alone is a claim anyone can make.
        """
        signers = {
            organizational_domain(str(sig.get("domain", "")))
            for d in self.symbols.get("DKIM_VALID", [])
            for sig in d.get("signatures", [])
        }
        dmarc = {str(d.get("from_domain", "")) for d in self.symbols.get("DMARC_PASS", [])}
        return [
            m.address.lower()
            for m in self.ctx.message.from_mailboxes
            if m.domain and (m.domain in dmarc or organizational_domain(m.domain) in signers)
        ]

    @cached_property
    def user_allowed(self) -> bool:
        """Every recipient allowed this sender from their quarantine, and the sender is proven."""
        allowed = self.ctx.allowed_senders
        return bool(allowed) and any(
            a in allowed for a in self.verified_sender + self.verified_from
        )

    @cached_property
    def sender_domain(self) -> list[str]:
        sender = self.ctx.envelope.mail_from
        return [sender.rpartition("@")[2].lower()] if "@" in sender else []

    @cached_property
    def recipients(self) -> list[str]:
        return [r.lower() for r in self.ctx.envelope.rcpts]

    @cached_property
    def recipient_domains(self) -> list[str]:
        return sorted({r.rpartition("@")[2] for r in self.recipients if "@" in r})

    @cached_property
    def subject(self) -> list[str]:
        return [self.ctx.message.subject[:MAX_TEXT]]

    @cached_property
    def body(self) -> list[str]:
        return [self.ctx.features.text.partition("\n")[2][:MAX_TEXT]]

    @cached_property
    def urls(self) -> list[str]:
        return self.ctx.urls

    @cached_property
    def url_domains(self) -> list[str]:
        return sorted({t[4:] for t in self.ctx.features.tokens if t.startswith("url:")})

    @cached_property
    def attachments(self) -> list[tuple[str, str]]:
        walk = self.ctx.message.walk()
        return [(p.filename, p.content_type) for p in walk.parts if p.is_attachment]

    @cached_property
    def true_types(self) -> list[str]:
        return [str(f["true_type"]) for f in self.ctx.inspected_files if f.get("true_type")]

    @cached_property
    def archive_members(self) -> list[str]:
        return [str(f["file"]) for f in self.ctx.inspected_files if f.get("in_archive")]

    @cached_property
    def spam_probability(self) -> float | None:
        for details in self.symbols.get("ML_SPAM", []) + self.symbols.get("ML_HAM", []):
            if "probability" in details:
                return float(details["probability"])
        return None

    def header_values(self, name: str) -> list[str]:
        from gateway.message import decode_header_value

        return [decode_header_value(v) for v in self.ctx.message.headers(name)]
