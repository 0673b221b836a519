"""Sender authentication: SPF, DKIM, DMARC and ARC, and the Authentication-Results header.

SPF, DKIM and ARC run concurrently, their DNS answered by the shared async resolver; DMARC
then combines their results, its record fetched meanwhile. SPF is first evaluated on the
event loop from cached answers alone, and only when one is missing in a worker thread that
can wait for DNS; DKIM verifies a message of common size on the loop (gateway.auth.dkim).
A DNS failure is a temperror symbol, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from pydantic import Field

from gateway.auth import dmarc as dmarc_module
from gateway.auth.arc import ArcResult, verify_arc
from gateway.auth.dkim import DkimResult, verify_dkim
from gateway.auth.dmarc import DmarcResult
from gateway.auth.results import authentication_results
from gateway.auth.spf import SpfResult, check_spf
from gateway.checks.base import parse_section
from gateway.clients.dns import CachedAnswers, DnsBridge, DnsClient, DnsTempError
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.services import Services
from gateway.types import Action, Effect, Finding, Status


class AuthConfig(CheckConfig):
    """``[checks.auth]``; the resolver itself is ``[dns]``."""

    timeout: float = Field(default=15.0, gt=0)
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    arc: bool = True
    max_signatures: int = Field(default=5, gt=0, le=50)
    min_key_bits: int = Field(default=1024, ge=512)
    # Sealers whose passing ARC chain lifts a DMARC quarantine/reject (mailing lists you trust).
    arc_trusted_sealers: list[str] = Field(default_factory=list)
    # What a DNS temperror in SPF, DKIM or DMARC does (as Haraka's "defer temperror"):
    # "dmarc" defers (4xx) when the From domain is known, from the last answer seen, to
    # publish p=reject or p=quarantine, since a blocked or failing DNS must not let mail
    # spoofing such a domain through; "tempfail" always defers; "score" only scores.
    on_temperror: Literal["dmarc", "tempfail", "score"] = "dmarc"


_SPF = {
    "pass": ("SPF_PASS", Status.PASS),
    "fail": ("SPF_FAIL", Status.FAIL),
    "softfail": ("SPF_SOFTFAIL", Status.SOFTFAIL),
    "neutral": ("SPF_NEUTRAL", Status.NEUTRAL),
    "none": ("SPF_NONE", Status.NONE),
    "temperror": ("SPF_TEMPERROR", Status.TEMPERROR),
    "permerror": ("SPF_PERMERROR", Status.PERMERROR),
}
_DKIM = {
    "valid": ("DKIM_VALID", Status.PASS),
    "invalid": ("DKIM_INVALID", Status.FAIL),
    "expired": ("DKIM_EXPIRED", Status.FAIL),
    "nokey": ("DKIM_NO_KEY", Status.PERMERROR),
    "temperror": ("DKIM_TEMPERROR", Status.TEMPERROR),
    "permerror": ("DKIM_PERMERROR", Status.PERMERROR),
}
_DMARC = {
    "pass": ("DMARC_PASS", Status.PASS),
    "fail": ("DMARC_FAIL", Status.FAIL),
    "none": ("DMARC_NONE", Status.NONE),
    "temperror": ("DMARC_TEMPERROR", Status.TEMPERROR),
    "permerror": ("DMARC_PERMERROR", Status.PERMERROR),
}
_ARC = {"pass": Status.PASS, "fail": Status.FAIL, "none": Status.NONE}


@dataclass
class AuthCheck:
    """Who really sent the message, as SPF, DKIM, DMARC and ARC see it."""

    name: ClassVar[str] = "auth"
    waits_on_network: ClassVar[bool] = True  # started first (Pipeline.scan)
    symbols: ClassVar[Mapping[str, str]] = {
        **{sym: f"SPF {res} (RFC 7208)" for res, (sym, _) in _SPF.items()},
        **{sym: f"DKIM signature {res}" for res, (sym, _) in _DKIM.items()},
        "DKIM_NONE": "No DKIM signature",
        **{sym: f"DMARC {res} (RFC 7489)" for res, (sym, _) in _DMARC.items()},
        "DMARC_POLICY_REJECT": "DMARC failed and the domain asks to reject",
        "DMARC_POLICY_QUARANTINE": "DMARC failed and the domain asks to quarantine",
        "DMARC_POLICY_NONE": "DMARC failed; the domain only monitors (p=none)",
        "ARC_PASS": "The ARC chain validates (RFC 8617)",
        "ARC_FAIL": "The ARC chain is broken",
        "ARC_NONE": "No ARC chain",
        "AUTH_TEMPFAIL": "A DNS temperror kept SPF, DKIM or DMARC from an answer (on_temperror)",
    }
    config: AuthConfig
    dns: DnsClient
    authserv_id: str
    known_policies: dmarc_module.KnownPolicies = field(default_factory=dmarc_module.KnownPolicies)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        config = parse_section(cls.name, AuthConfig, section)
        shared = services or Services()
        return cls(
            config, shared.dns(settings.dns), settings.server.identity, shared.known_policies
        )

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        cfg = self.config
        env = ctx.envelope
        bridge = DnsBridge(self.dns, asyncio.get_running_loop())
        from_domains = [m.domain for m in ctx.message.from_mailboxes if m.domain]
        lookup_timeout = self.dns.config.timeout

        async def spf() -> SpfResult | None:
            if not cfg.spf:
                return None
            cached = CachedAnswers(self.dns)
            result = check_spf(cached, env.client_ip, env.mail_from, env.helo, lookup_timeout * 3)
            if not cached.missed:
                return result
            return await asyncio.to_thread(
                check_spf, bridge, env.client_ip, env.mail_from, env.helo, lookup_timeout * 3
            )

        async def dkim() -> list[DkimResult] | None:
            if not cfg.dkim:
                return None
            return await verify_dkim(env.raw, self.dns, cfg.max_signatures, cfg.min_key_bits)

        async def arc() -> ArcResult | None:
            if not cfg.arc:
                return None
            if b"arc-seal:" not in env.raw[:65536].lower():
                return ArcResult("none")  # no chain: no thread, no DNS
            return await asyncio.to_thread(verify_arc, env.raw, bridge, cfg.min_key_bits)

        async def prefetch_dmarc() -> None:
            # Warm the cache for the DMARC record while SPF and DKIM run.
            if cfg.dmarc and len(set(from_domains)) == 1:
                # evaluate() asks again and reports a temperror itself.
                with contextlib.suppress(DnsTempError):
                    await dmarc_module.find_record(
                        self.dns, from_domains[0].lower(), self.known_policies
                    )

        spf_result, dkim_results, arc_result, _ = await asyncio.gather(
            spf(), dkim(), arc(), prefetch_dmarc()
        )
        dmarc_result: DmarcResult | None = None
        if cfg.dmarc:
            dmarc_result = await dmarc_module.evaluate(
                self.dns,
                from_domains,
                spf_result.result if spf_result else "none",
                spf_result.domain if spf_result else "",
                [d.domain for d in dkim_results or () if d.status == "valid"],
                known=self.known_policies,
                auth_temperror=bool(
                    (spf_result and spf_result.result == "temperror")
                    or any(d.status == "temperror" for d in dkim_results or ())
                ),
            )
        ctx.added_headers.append(
            (
                "Authentication-Results",
                authentication_results(
                    self.authserv_id, spf_result, dkim_results, dmarc_result, arc_result
                ),
            )
        )
        findings = [
            *self._spf(spf_result),
            *self._dkim(dkim_results),
            *self._arc(arc_result),
            *self._dmarc(dmarc_result, arc_result),
        ]
        return [*findings, *self._temperror(findings, from_domains)]

    def _temperror(self, findings: list[Finding], from_domains: list[str]) -> list[Finding]:
        """AUTH_TEMPFAIL (a 4xx floor) when a temperror hid the answer and on_temperror says so."""
        failed = [f.symbol for f in findings if f.status is Status.TEMPERROR]
        mode = self.config.on_temperror
        if not failed or mode == "score":
            return []
        detail: dict[str, Any] = {"temperrors": failed}
        if mode == "dmarc":
            domains = {d.lower() for d in from_domains}
            known = self.known_policies.get(domains.pop()) if len(domains) == 1 else None
            if known not in ("reject", "quarantine"):
                return []
            detail["known_policy"] = known
        return [
            Finding(self.name, "AUTH_TEMPFAIL", Status.TEMPERROR, detail,
                    Effect(least=Action.TEMPFAIL))
        ]  # fmt: skip

    def _spf(self, result: SpfResult | None) -> list[Finding]:
        if result is None:
            return []
        symbol, status = _SPF.get(result.result, ("SPF_PERMERROR", Status.PERMERROR))
        detail = {"identity": result.identity, "domain": result.domain}
        if result.explanation:
            detail["explanation"] = result.explanation
        return [Finding(self.name, symbol, status, detail)]

    def _dkim(self, results: list[DkimResult] | None) -> list[Finding]:
        if results is None:
            return []
        if not results:
            return [Finding(self.name, "DKIM_NONE", Status.NONE)]
        grouped: dict[str, list[dict[str, str]]] = {}
        for sig in results:
            symbol, _ = _DKIM[sig.status]
            entry = {"domain": sig.domain, "selector": sig.selector, "algorithm": sig.algorithm}
            if sig.reason:
                entry["reason"] = sig.reason
            grouped.setdefault(symbol, []).append(entry)
        statuses = {sym: status for sym, status in _DKIM.values()}
        return [
            Finding(self.name, symbol, statuses[symbol], {"signatures": sigs})
            for symbol, sigs in grouped.items()
        ]

    def _arc(self, result: ArcResult | None) -> list[Finding]:
        if result is None:
            return []
        detail: dict[str, Any] = {}
        if result.sealer:
            detail = {"sealer": result.sealer, "instances": result.instances}
        if result.reason and result.result == "fail":
            detail["reason"] = result.reason
        status = _ARC.get(result.result, Status.FAIL)
        return [Finding(self.name, f"ARC_{status.name}", status, detail)]

    def _dmarc(self, result: DmarcResult | None, arc: ArcResult | None) -> list[Finding]:
        if result is None:
            return []
        symbol, status = _DMARC[result.result]
        detail: dict[str, Any] = {"from_domain": result.from_domain}
        if result.reason:
            detail["reason"] = result.reason
        if result.result in ("pass", "fail"):
            detail.update(
                policy=result.policy,
                published_policy=result.published_policy,
                record_domain=result.record_domain,
                pct=result.pct,
                sampled=result.sampled,
                spf_aligned=result.spf_aligned,
                dkim_aligned=result.dkim_aligned,
            )
        findings = [Finding(self.name, symbol, status, detail)]
        if result.result != "fail":
            return findings
        trusted = {s.lower() for s in self.config.arc_trusted_sealers}
        if arc is not None and arc.result == "pass" and arc.sealer in trusted:
            # A list we trust vouches for the original authentication (RFC 8617 7.2).
            detail["overridden_by_arc"] = arc.sealer
            return findings
        policy_detail = {"from_domain": result.from_domain, "policy": result.policy}
        reply = Effect(reply=f"Rejected by the DMARC policy of {result.from_domain}")
        symbol = f"DMARC_POLICY_{result.policy.upper()}"
        findings.append(Finding(self.name, symbol, Status.FAIL, policy_detail, reply))
        return findings

    async def aclose(self) -> None:
        return None
