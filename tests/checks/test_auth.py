"""SPF, DKIM, DMARC and ARC against a real DNS server on loopback with the tests' own zones."""

from __future__ import annotations

import random

import dkim
import pytest

from bench.common import load_corpus
from gateway.auth.dkim import split_for_dkim
from gateway.auth.dmarc import aligned, evaluate, organizational_domain, parse_record
from gateway.auth.results import authserv_id_of
from gateway.clients.dns import DnsClient
from gateway.config import DnsConfig
from gateway.disposition import stamp
from gateway.message import crlf_line_ends
from gateway.types import Action
from tests import authdata
from tests.authdata import LIST_IP, OTHER_IP, SENDER_IP
from tests.checks.golden import offline_settings, scan_with_context


async def scan(
    dns, raw, ip=SENDER_IP, mail_from="alice@sender.test", helo="mail.sender.test", **auth
):
    settings = offline_settings(dns={"nameservers": [dns.address], "timeout": 1.0}, auth=auth)
    verdict, ctx = await scan_with_context(
        raw, settings, client_ip=ip, mail_from=mail_from, helo=helo
    )
    found = {s.name: s for s in verdict.symbols if s.check == "auth"}
    header = dict(ctx.added_headers).get("Authentication-Results", "")
    return verdict, found, header


# --- SPF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mail_from", "ip", "symbol"),
    [
        ("a@sender.test", SENDER_IP, "SPF_PASS"),
        ("a@sender.test", OTHER_IP, "SPF_FAIL"),
        ("a@softfail.test", OTHER_IP, "SPF_SOFTFAIL"),
        ("a@neutral.test", OTHER_IP, "SPF_NEUTRAL"),
        ("a@nospf.test", OTHER_IP, "SPF_NONE"),
        ("a@include.test", SENDER_IP, "SPF_PASS"),
        ("a@include.test", OTHER_IP, "SPF_FAIL"),
        ("a@redirect.test", SENDER_IP, "SPF_PASS"),
        ("a@a.test", SENDER_IP, "SPF_PASS"),
        ("a@mx.test", SENDER_IP, "SPF_PASS"),
        ("a@mx.test", OTHER_IP, "SPF_FAIL"),
        ("a@exists.test", SENDER_IP, "SPF_PASS"),
        ("a@exists.test", OTHER_IP, "SPF_FAIL"),
        ("a@loop.test", SENDER_IP, "SPF_PERMERROR"),
        ("a@broken.test", SENDER_IP, "SPF_PERMERROR"),
        ("a@servfail.test", SENDER_IP, "SPF_TEMPERROR"),
        ("a@slow.test", SENDER_IP, "SPF_TEMPERROR"),
        ("a@huge.test", SENDER_IP, "SPF_PASS"),
        ("a@huge.test", OTHER_IP, "SPF_FAIL"),
        ("a@hugespf.test", SENDER_IP, "SPF_PASS"),
        ("a@hugespf.test", OTHER_IP, "SPF_FAIL"),
    ],
)
async def test_spf(dns, mail_from, ip, symbol):
    _, found, header = await scan(dns, authdata.message(), ip=ip, mail_from=mail_from)
    spf = [name for name in found if name.startswith("SPF_")]
    assert spf == [symbol]
    assert f"spf={symbol[4:].lower()} smtp.mailfrom={mail_from}" in header


async def test_spf_uses_helo_for_the_null_sender(dns):
    _, found, header = await scan(dns, authdata.message(), mail_from="", helo="sender.test")
    assert found["SPF_PASS"].details["identity"] == "helo"
    assert "smtp.helo=sender.test" in header


async def test_spf_lookup_limit_is_in_the_details(dns):
    _, found, _ = await scan(dns, authdata.message(), mail_from="a@loop.test")
    assert "lookup" in found["SPF_PERMERROR"].details["explanation"].lower()


# --- DKIM --------------------------------------------------------------------------------


async def test_dkim_valid_rsa(dns, keys):
    _, found, header = await scan(dns, authdata.sign_rsa(authdata.message(), keys))
    [sig] = found["DKIM_VALID"].details["signatures"]
    assert (sig["domain"], sig["selector"], sig["algorithm"]) == (
        "sender.test",
        "sel",
        "rsa-sha256",
    )
    assert "dkim=pass header.d=sender.test header.s=sel" in header


async def test_dkim_valid_ed25519(dns, keys):
    _, found, _ = await scan(dns, authdata.sign_ed25519(authdata.message(), keys))
    assert found["DKIM_VALID"].details["signatures"][0]["algorithm"] == "ed25519-sha256"


async def test_dkim_body_modified(dns, keys):
    signed = authdata.sign_rsa(authdata.message(), keys)
    _, found, header = await scan(dns, signed.replace(b"Numbers attached.", b"Numbers changed."))
    assert found["DKIM_INVALID"].details["signatures"][0]["reason"] == "body hash"
    assert "dkim=fail (body hash)" in header


async def test_dkim_header_modified(dns, keys):
    signed = authdata.sign_rsa(authdata.message(), keys)
    _, found, _ = await scan(dns, signed.replace(b"Quarterly report", b"Quarterly REPORT"))
    assert found["DKIM_INVALID"].details["signatures"][0]["reason"] == "signature"


async def test_dkim_key_missing(dns, keys):
    signed = authdata.sign_rsa(authdata.message(), keys, selector="gone")
    _, found, header = await scan(dns, signed)
    assert found["DKIM_NO_KEY"].details["signatures"][0]["selector"] == "gone"
    assert "dkim=permerror" in header


async def test_dkim_expired(dns, keys):
    signed = authdata.sign_rsa(authdata.message(), keys)
    expired = signed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1000000000;", 1)
    _, found, _ = await scan(dns, expired)
    assert "DKIM_EXPIRED" in found


async def test_dkim_key_lookup_failure_is_a_temperror(dns, keys):
    dns.zone.drop.add("sel._domainkey.sender.test.")
    _, found, _ = await scan(dns, authdata.sign_rsa(authdata.message(), keys))
    assert "DKIM_TEMPERROR" in found


async def test_no_signature(dns):
    _, found, header = await scan(dns, authdata.message())
    assert "DKIM_NONE" in found
    assert "dkim=none" in header


async def test_signature_limit(dns, keys):
    raw = authdata.message()
    for _ in range(4):
        raw = authdata.sign_rsa(raw, keys)
    _, found, _ = await scan(dns, raw, max_signatures=2)
    assert len(found["DKIM_VALID"].details["signatures"]) == 2


# --- DMARC -------------------------------------------------------------------------------


async def test_dmarc_pass_by_spf_alignment_alone(dns):
    _, found, header = await scan(dns, authdata.message())  # unsigned, SPF pass
    assert found["DMARC_PASS"].details["spf_aligned"] is True
    assert found["DMARC_PASS"].details["dkim_aligned"] is False
    assert "dmarc=pass (p=reject) header.from=sender.test" in header


async def test_dmarc_pass_by_dkim_alignment_alone(dns, keys):
    signed = authdata.sign_rsa(authdata.message(), keys)
    _, found, _ = await scan(dns, signed, ip=OTHER_IP)  # SPF fails, DKIM aligned
    assert "SPF_FAIL" in found
    assert found["DMARC_PASS"].details["dkim_aligned"] is True


async def test_dmarc_fail_with_p_reject_is_rejected(dns):
    verdict, found, header = await scan(dns, authdata.message(), ip=OTHER_IP)
    assert found["DMARC_FAIL"].details["policy"] == "reject"
    assert "DMARC_POLICY_REJECT" in found
    assert verdict.action is Action.REJECT
    assert verdict.reply_text == "Rejected by the DMARC policy of sender.test"
    assert "dmarc=fail (p=reject)" in header


async def test_dmarc_reject_can_be_only_scored(dns):
    settings = offline_settings(
        dns={"nameservers": [dns.address]}, auth={}
    ).model_copy(update={"policy": offline_settings().policy.model_copy(
        update={"force": {"DMARC_POLICY_REJECT": "score"}})})  # fmt: skip
    verdict, _ = await scan_with_context(authdata.message(), settings, client_ip=OTHER_IP,
                                         mail_from="a@sender.test", helo="h")  # fmt: skip
    assert "DMARC_POLICY_REJECT" in verdict.symbol_names
    assert verdict.action is not Action.REJECT


async def test_dmarc_quarantine(dns):
    verdict, found, _ = await scan(
        dns, authdata.message("eve@quarantine.test"), ip=OTHER_IP, mail_from="eve@quarantine.test"
    )
    assert "DMARC_POLICY_QUARANTINE" in found
    assert verdict.action is Action.QUARANTINE


async def test_dmarc_subdomain_policy(dns):
    raw = authdata.message("a@sub.parent.test")
    _, found, _ = await scan(dns, raw, ip=OTHER_IP, mail_from="a@sub.parent.test")
    details = found["DMARC_FAIL"].details
    assert details["record_domain"] == "parent.test"
    assert details["published_policy"] == "reject"  # sp=, not p=none
    assert "DMARC_POLICY_REJECT" in found


async def test_dmarc_pct_zero_downgrades_reject_to_quarantine(dns):
    raw = authdata.message("a@pct.test")
    _, found, _ = await scan(dns, raw, ip=OTHER_IP, mail_from="a@pct.test")
    assert found["DMARC_FAIL"].details["sampled"] is False
    assert "DMARC_POLICY_QUARANTINE" in found
    assert "DMARC_POLICY_REJECT" not in found


async def test_dmarc_pct_samples(dns):
    client = DnsClient(DnsConfig(nameservers=[dns.address]))
    dns.zone.add("_dmarc.half.test", "TXT", '"v=DMARC1; p=reject; pct=50"')
    rng = random.Random(7)
    results = [
        (await evaluate(client, ["half.test"], "fail", "half.test", [], rng)).policy
        for _ in range(400)
    ]
    assert 150 < results.count("reject") < 250
    assert set(results) == {"reject", "quarantine"}


async def test_dmarc_none_and_temperror(dns):
    _, found, _ = await scan(dns, authdata.message("a@nospf.test"), mail_from="a@nospf.test")
    assert "DMARC_NONE" in found
    dns.zone.servfail.add("_dmarc.sender.test.")
    _, found, _ = await scan(dns, authdata.message(), ip=OTHER_IP)
    assert "DMARC_TEMPERROR" in found
    assert "DMARC_POLICY_REJECT" not in found


def test_dmarc_helpers():
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert aligned("mail.sender.test", "sender.test", "r")
    assert not aligned("mail.sender.test", "sender.test", "s")
    assert parse_record("v=DMARC1; p=bogus") is None
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:x@y").p == "none"
    record = parse_record("v=DMARC1;p=quarantine;sp=none;pct=250;adkim=s")
    assert (record.p, record.sp, record.pct, record.adkim, record.aspf) == (
        "quarantine",
        "none",
        100,
        "s",
        "r",
    )
    assert parse_record("p=reject") is None


# --- ARC ---------------------------------------------------------------------------------


async def test_arc_through_a_mailing_list(dns, keys):
    listed = authdata.through_mailing_list(authdata.sign_rsa(authdata.message(), keys), keys)
    args = {"ip": LIST_IP, "mail_from": "team-bounces@list.test"}
    verdict, found, header = await scan(dns, listed, **args)
    assert found["ARC_PASS"].details["sealer"] == "list.test"
    assert "DKIM_INVALID" in found  # the list changed subject and body
    assert "DMARC_FAIL" in found  # SPF passes for list.test, which is not aligned
    assert verdict.action is Action.REJECT  # nobody trusts the list yet
    assert "arc=pass" in header
    verdict, found, _ = await scan(dns, listed, arc_trusted_sealers=["list.test"], **args)
    assert found["DMARC_FAIL"].details["overridden_by_arc"] == "list.test"
    assert "DMARC_POLICY_REJECT" not in found
    assert verdict.action is not Action.REJECT


async def test_arc_broken_chain(dns, keys):
    listed = authdata.through_mailing_list(authdata.sign_rsa(authdata.message(), keys), keys)
    tampered = listed.replace(b"[team] Quarterly", b"[team] Quarterly!!")
    _, found, _ = await scan(dns, tampered, ip=LIST_IP, mail_from="team-bounces@list.test")
    assert "ARC_FAIL" in found


async def test_arc_none(dns):
    _, found, _ = await scan(dns, authdata.message())
    assert "ARC_NONE" in found


# --- Authentication-Results --------------------------------------------------------------


def test_forged_authentication_results_claiming_our_id_are_removed():
    raw = (
        b"Authentication-Results: MX.test; dkim=pass header.d=bank.test\r\n"
        b"Authentication-Results: (comment) mx.test 1; spf=pass\r\n"
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"Subject: hi\r\n\r\nAuthentication-Results: mx.test; in the body\r\n"
    )
    out = stamp(raw, [], "mx.test")  # as every message on its way out
    assert out == (
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"Subject: hi\r\n\r\nAuthentication-Results: mx.test; in the body\r\n"
    )
    assert authserv_id_of(" example.org 1; none") == "example.org"


async def test_dns_goes_to_the_configured_server(dns, keys):
    await scan(dns, authdata.sign_rsa(authdata.message(), keys))
    assert dns.queries[("sender.test.", "TXT")] >= 1  # pyspf, through our resolver
    assert dns.queries[("sel._domainkey.sender.test.", "TXT")] == 1  # dkimpy's key
    assert dns.queries[("_dmarc.sender.test.", "TXT")] == 1  # fetched once, then cached


async def test_dns_answers_are_cached_for_their_ttl_and_served_to_threads_directly(dns):
    import asyncio

    from gateway.clients.dns import DnsBridge

    client = DnsClient(DnsConfig(nameservers=[dns.address], timeout=1.0))
    first = await client.query("sender.test", "TXT")
    again = await client.query("Sender.Test.", "TXT")  # names compare case-insensitively
    assert again is first
    assert dns.queries[("sender.test.", "TXT")] == 1
    missing = await client.query("nosuchname.test", "TXT")
    assert missing.nxdomain
    await client.query("nosuchname.test", "TXT")
    assert dns.queries[("nosuchname.test.", "TXT")] == 1  # negative answers too
    # A cached answer reaches a worker thread without a trip to the event loop: asked from
    # the loop's own thread (which cannot serve a hand-off now), it still answers at once.
    bridge = DnsBridge(client, asyncio.get_running_loop())
    assert bridge.txt("sender.test") == await client.txt("sender.test")
    # Past its TTL an answer is asked for again.
    client._remember(first, ttl=0)
    assert client.cached("sender.test", "TXT") is None
    await client.query("sender.test", "TXT")
    assert dns.queries[("sender.test.", "TXT")] == 2


# --- the fast paths: SPF from the cache on the loop, DKIM RSA through OpenSSL ----------------


@pytest.mark.parametrize(
    ("mail_from", "ip"),
    [
        ("a@sender.test", SENDER_IP),
        ("a@sender.test", OTHER_IP),
        ("a@include.test", SENDER_IP),
        ("a@redirect.test", OTHER_IP),
        ("a@mx.test", SENDER_IP),
        ("a@exists.test", OTHER_IP),
        ("a@nospf.test", OTHER_IP),
        ("a@loop.test", SENDER_IP),
        ("a@hugespf.test", SENDER_IP),
    ],
)
async def test_spf_from_the_cache_alone_is_the_answer_dns_gives(dns, mail_from, ip):
    import asyncio

    from gateway.auth.spf import check_spf
    from gateway.clients.dns import CachedAnswers, DnsBridge

    client = DnsClient(DnsConfig(nameservers=[dns.address], timeout=1.0))
    cold = CachedAnswers(client)
    check_spf(cold, ip, mail_from, "mail.sender.test", 3.0)
    assert cold.missed  # nothing cached yet: the caller must ask again in a thread
    bridge = DnsBridge(client, asyncio.get_running_loop())
    through_dns = await asyncio.to_thread(check_spf, bridge, ip, mail_from, "mail.sender.test", 3)
    asked = sum(dns.queries.values())
    warm = CachedAnswers(client)
    from_cache = check_spf(warm, ip, mail_from, "mail.sender.test", 3.0)
    assert not warm.missed
    assert from_cache == through_dns
    assert sum(dns.queries.values()) == asked  # the second evaluation asked no server


async def test_spf_is_asked_again_through_dns_when_the_cache_has_part_of_the_answer(dns):
    from gateway.context import Envelope, ScanContext
    from gateway.pipeline import Pipeline

    settings = offline_settings(dns={"nameservers": [dns.address], "timeout": 1.0}, auth={})
    pipeline = Pipeline.from_settings(settings)
    auth = next(check for check in pipeline.checks if check.name == "auth")
    await auth.dns.query("include.test", "TXT")  # the record, but not the one it includes
    envelope = Envelope(
        id="0000000000000000.1",
        raw=authdata.message(),
        mail_from="a@include.test",
        rcpts=("bob@example.test",),
        client_ip=SENDER_IP,
    )
    result = await pipeline.scan(ScanContext(envelope))
    await pipeline.aclose()
    assert "SPF_PASS" in {s.name for s in result.verdict.symbols}
    assert dns.queries[("_spf.sender.test.", "TXT")] == 1


@pytest.mark.parametrize("algorithm", [b"rsa-sha256", b"rsa-sha1"])
def test_openssl_rsa_verification_answers_as_dkimpy_does(keys, algorithm):
    import dkim

    from gateway.auth import dkim as gateway_dkim

    assert dkim.RSASSA_PKCS1_v1_5_verify is gateway_dkim.rsa_verify  # dkimpy calls ours
    signed = dkim.sign(
        authdata.message(), b"sel", b"sender.test", keys.rsa_private, signature_algorithm=algorithm
    )
    other_key = keys.list_public_b64.encode()
    cases = {
        "valid": (signed + authdata.message(), keys.rsa_public_b64.encode()),
        "header changed": (
            (signed + authdata.message()).replace(b"Quarterly", b"Yearly"),
            keys.rsa_public_b64.encode(),
        ),
        "other key": (signed + authdata.message(), other_key),
    }
    outcomes = {}
    for name, (raw, public) in cases.items():
        record = b"v=DKIM1; k=rsa; p=" + public
        answers = []
        for verify in (gateway_dkim.rsa_verify, gateway_dkim._PURE_PYTHON_VERIFY):
            dkim.RSASSA_PKCS1_v1_5_verify = verify
            try:
                answers.append(dkim.verify(raw, dnsfunc=lambda *_, r=record, **__: r))
            finally:
                dkim.RSASSA_PKCS1_v1_5_verify = gateway_dkim.rsa_verify
        assert answers[0] == answers[1], name
        outcomes[name] = answers[0]
    assert outcomes == {"valid": True, "header changed": False, "other key": False}


async def test_dkim_of_a_big_message_is_verified_in_a_thread_with_the_same_answers(dns, keys):
    from gateway.auth import dkim as gateway_dkim

    body = "A long report line, repeated to make the message big.\r\n" * 2000
    signed = authdata.sign_rsa(authdata.message(body=body), keys)
    assert len(signed) > gateway_dkim.INLINE_BYTES
    _, found, _ = await scan(dns, signed)
    assert "DKIM_VALID" in found
    _, found, _ = await scan(dns, signed.replace(b"repeated to", b"REPEATED to", 1))
    assert found["DKIM_INVALID"].details["signatures"][0]["reason"] == "body hash"


@pytest.mark.parametrize("failure_ttl", [10.0, 0.0])
async def test_dns_failures_are_remembered_briefly(dns, failure_ttl):
    """A domain whose DNS times out costs its next messages no second wait (RFC 2308 7.1)."""
    from gateway.clients.dns import DnsTempError

    dns.zone.drop.add("down.test.")
    client = DnsClient(DnsConfig(nameservers=[dns.address], timeout=0.5, failure_ttl=failure_ttl))
    with pytest.raises(DnsTempError):
        await client.txt("down.test")
    asked = dns.queries[("down.test.", "TXT")]
    assert asked >= 1
    with pytest.raises(DnsTempError) as again:
        await client.txt("down.test")
    if failure_ttl:
        assert dns.queries[("down.test.", "TXT")] == asked  # not asked again
        assert "remembered" in str(again.value)
    else:
        assert dns.queries[("down.test.", "TXT")] > asked


def _outcome(parse, raw: bytes) -> object:
    """What ``parse`` returns for ``raw``, or the type of dkimpy error it raises."""
    try:
        return parse(raw)
    except dkim.MessageFormatError as exc:
        return type(exc)


ODD_ENDINGS = [
    b"A: b\r\n\r\nbody\r\n",
    b"A: b\n\nbody\nwith bare\r\nand CRLF\n",
    b"A: b\r\n folded\r\n\nbody\r",
    b"A: b\r\n",  # no body
    b"A: b",
    b"\r\nbody only\n",
    b"\nbody only",
    b"From someone\r\nA: b\r\n\r\n\r\n\r\n",
    b"A: b\r\r\nB: c\r\n\r\nx\r\r\n",  # a CR before CRLF is not a blank line
    b"A: b\r\nbad header\r\n\r\nbody",  # dkimpy's own error
    b"A: b\r\n\r\nbad header\r\n",  # in the body: not a header error
    b"",
]


def test_split_for_dkim_gives_what_dkimpy_parses():
    """The faster split must hand dkimpy exactly what its own parse would, on every
    corpus message and on odd line endings (bare LF, CR, no body, no header)."""
    corpus = [raw for _, raw in load_corpus(limit=400)]  # as stored: LF line ends
    messages = corpus + [crlf_line_ends(raw) for raw in corpus] + ODD_ENDINGS  # as received
    for raw in messages:
        assert _outcome(split_for_dkim, raw) == _outcome(dkim.rfc822_parse, raw), raw[:200]
