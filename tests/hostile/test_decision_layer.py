"""Talking past the decision layer: each attack of issue 14, reproduced and refused.

Real parts: a gateway on loopback with a real sink, clamd "down" as a socket path nobody
listens on, a real DNS server on loopback that is made to fail (SERVFAIL) mid-test.
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path

import aiosmtplib
import pytest

from gateway.clients.dns import DnsClient
from gateway.config import PROJECT_ROOT, Settings
from gateway.context import Envelope, ScanContext
from gateway.disposition import ADDED_HEADERS, stamp, verdict_headers
from gateway.message import iter_header_fields, split_header_block
from gateway.pipeline import Pipeline
from gateway.types import Action, Status, Verdict
from tests import authdata
from tests.authdata import OTHER_IP, SENDER_IP
from tests.checks.golden import offline_settings, scan_bytes
from tests.conftest import message, running_gateway, send_message

ALLOW_ON_CLAIM = """\
rules:
  - name: ALLOW_ON_CLAIM
    description: an allow that trusts the envelope sender alone (the mistake of old)
    owner: test
    mode: active
    when:
      sender: {in_list: allow_senders}
    action: accept
"""


async def test_forced_accept_cannot_lift_an_unscanned_message(sink, config_factory, tmp_path):
    """Mail 'from' an allow-listed sender while clamd is down is deferred, not delivered."""
    rules = tmp_path / "rules"
    (rules / "lists").mkdir(parents=True)
    (rules / "allow.yaml").write_text(ALLOW_ON_CLAIM)
    (rules / "lists" / "allow_senders.txt").write_text("a@sender.test\n")
    config = config_factory(
        sink.port,
        rules={"enabled": True, "paths": [str(rules)]},
        antivirus={"address": f"unix:{tmp_path / 'no-clamd.sock'}", "timeout": 2.0},
        checks__antivirus={"enabled": True},
    )
    async with running_gateway(config) as gw:
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await send_message(gw.port, message(subject="allow-listed, unscanned"))
        assert deferred.value.code == 451
        [event] = gw.events(kind="message")
        assert event.action == "tempfail"
        assert event.reason == "check antivirus failed (on_error)"
        assert {"ALLOW_ON_CLAIM", "AV_FAIL"} <= {s["name"] for s in event.symbols}
    assert sink.messages == []


def shipped_allow_rules(tmp_path: Path, allowed: str) -> Path:
    """The shipped allow/deny rules, with an allow list holding ``allowed``."""
    rules = tmp_path / "shipped"
    (rules / "lists").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "rules" / "allow-deny.yaml", rules)
    for name in ("deny_senders", "deny_ips"):
        (rules / "lists" / f"{name}.txt").write_text("")
    (rules / "lists" / "allow_senders.txt").write_text(f"{allowed}\n")
    return rules


@pytest.mark.parametrize(
    ("client_ip", "signed", "allowed"),
    [
        (OTHER_IP, False, False),  # forged: SPF fails, no signature
        (SENDER_IP, False, True),  # SPF pass for the envelope domain
        (OTHER_IP, True, True),  # an aligned DKIM pass for the From domain
    ],
)
async def test_shipped_allow_list_needs_proof(dns, keys, tmp_path, client_ip, signed, allowed):
    rules = shipped_allow_rules(tmp_path, "alice@sender.test")
    settings = offline_settings(dns={"nameservers": [dns.address], "timeout": 1.0}, auth={})
    settings = settings.model_copy(update={"rules": settings.rules.model_copy(
        update={"enabled": True, "paths": [rules]})})  # fmt: skip
    raw = authdata.message()
    if signed:
        raw = authdata.sign_rsa(raw, keys)
    verdict = await scan_bytes(raw, settings, client_ip=client_ip,
                               mail_from="alice@sender.test", helo="mail.sender.test")  # fmt: skip
    assert ("LOCAL_ALLOW_SENDER" in verdict.symbol_names) is allowed
    if not allowed:  # the forgery meets DMARC p=reject instead
        assert verdict.action is Action.REJECT


async def test_dmarc_spoof_while_dns_fails_is_deferred(dns):
    """DNS that fails (or is blocked) must not let mail spoofing a p=reject domain through."""
    settings = offline_settings(dns={"nameservers": [dns.address], "timeout": 1.0}, auth={})
    pipeline = Pipeline.from_settings(settings)
    auth = next(c for c in pipeline.checks if c.name == "auth")

    async def scan(raw: bytes) -> Verdict:
        env = Envelope(id="t.1", raw=raw, mail_from="alice@sender.test", rcpts=("b@example.test",),
                       client_ip=OTHER_IP, helo="spoofer.example")  # fmt: skip
        return (await pipeline.scan(ScanContext(env))).verdict

    try:
        first = await scan(authdata.message())
        assert first.action is Action.REJECT  # DNS answers: DMARC p=reject applies
        # Later, the answers have expired (a fresh cache) and every query fails.
        auth.dns = DnsClient(settings.dns)  # type: ignore[attr-defined]
        dns.zone.servfail.update(dns.zone.names())
        spoof = await scan(authdata.message(subject="spoof while DNS is down"))
        assert spoof.action is Action.TEMPFAIL
        assert "AUTH_TEMPFAIL" in spoof.symbol_names
        # A domain never seen with a policy is only scored (no reason to defer all mail).
        unknown = await scan(authdata.message("eve@unknown-domain.test"))
        assert "AUTH_TEMPFAIL" not in unknown.symbol_names
        assert unknown.action is Action.ACCEPT
    finally:
        await pipeline.aclose()


async def test_on_temperror_tempfail_defers_every_temperror(dns):
    dns.zone.servfail.update({"unknown-domain.test.", "_dmarc.unknown-domain.test."})
    settings = offline_settings(
        dns={"nameservers": [dns.address], "timeout": 1.0}, auth={"on_temperror": "tempfail"}
    )
    verdict = await scan_bytes(authdata.message("eve@unknown-domain.test"), settings,
                               client_ip=OTHER_IP, mail_from="eve@unknown-domain.test")  # fmt: skip
    assert verdict.action is Action.TEMPFAIL


# --- our own headers ----------------------------------------------------------------------


async def test_forged_own_headers_are_stripped(gateway, sink):
    forged = message(
        subject="forged",
        X_Mailmoat_Unscanned="nothing (trust me)",
        X_Mailmoat_Action="accept",
        X_Mailmoat_Anything_New="x",
        X_Spam_Flag="NO",
    )
    assert (await send_message(gateway.port, forged)).code == 250
    [received] = await sink.wait_for(1)
    assert b"trust me" not in received.data
    assert b"X-Mailmoat-Anything-New" not in received.data
    assert b"X-Spam-Flag: NO" not in received.data
    assert received.data.count(b"X-Mailmoat-Action:") == 1


def test_every_header_the_gateway_adds_is_in_the_one_list():
    """Fails when a new header appears in gateway/ without being listed in ADDED_HEADERS.

    Added headers are written as (name, value) pairs (ctx.added_headers, verdict_headers);
    every such pair naming an X- field in the message path must be in the list.
    """
    listed = {name.lower() for name in ADDED_HEADERS}
    pair = re.compile(r"""\(\s*["'](X-[A-Za-z0-9-]+)["']\s*,""")
    found = {
        name.lower()
        for source in (PROJECT_ROOT / "gateway").rglob("*.py")
        if "web" not in source.parts  # HTTP response headers of the console
        for name in pair.findall(source.read_text())
    }
    assert {"x-mailmoat-unscanned", "x-spam-flag"} <= found  # the pattern sees real ones
    assert found <= listed, f"headers added but not listed: {sorted(found - listed)}"
    # And what stamp() writes is exactly what the list knows of.
    verdict = Verdict(Action.TAG, 6.0, (), "score 6")
    stamped = stamp(b"Subject: x\r\n\r\nbody\r\n", verdict_headers(verdict, "id.1"))
    names = {n.decode().lower() for n, _ in iter_header_fields(split_header_block(stamped)[0]) if n}
    assert names - {"subject"} <= listed


# --- what cannot be inspected is not waved through --------------------------------------


def attached(name: str, data: bytes) -> bytes:
    import base64

    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: documents\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
        b'Content-Type: application/zip; name="' + name.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b--\r\n"
    )


def zip_of(name: str, data: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def classifier_on() -> Settings:
    """Embedded defaults with the shipped model on: its ML_HAM must not offset a floor."""
    return offline_settings(classifier={"enabled": True})


async def test_an_exe_ten_zips_deep_is_held():
    payload = zip_of("invoice.exe", b"MZ\x90\x00" + b"\x00" * 200)
    for level in range(9):
        payload = zip_of(f"level{level}.zip", payload)
    verdict = await scan_bytes(attached("documents.zip", payload), classifier_on())
    [deep] = [s for s in verdict.symbols if s.name == "ARCHIVE_TOO_DEEP"]
    assert deep.effect.least is Action.QUARANTINE  # a floor, whatever the score
    assert verdict.action is Action.QUARANTINE


async def test_thirty_multiparts_deep_is_held():
    body = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for level in range(30, 0, -1):
        boundary = b"n%d" % level
        body = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
                + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")  # fmt: skip
    raw = b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: deep\r\n" + body
    verdict = await scan_bytes(raw, classifier_on())
    assert "MIME_TOO_DEEP" in verdict.symbol_names
    assert verdict.action is Action.QUARANTINE


async def test_a_zip_bomb_is_held_whatever_the_model_says():
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        chunk = b"\x00" * (1 << 20)
        for _ in range(1024):  # 1 GiB inflated
            member.write(chunk)
    bomb = buffer.getvalue()
    assert len(bomb) < 2 << 20
    verdict = await scan_bytes(attached("report.zip", bomb), classifier_on())
    assert "ARCHIVE_BOMB" in verdict.symbol_names
    assert "ML_HAM" in verdict.symbol_names  # the model alone would have let it pass
    assert verdict.action in (Action.QUARANTINE, Action.REJECT)


async def test_uninspectable_floor_is_configurable():
    payload = zip_of("a.txt", b"hello")
    for level in range(5):
        payload = zip_of(f"l{level}.zip", payload)
    settings = offline_settings(content={"uninspectable": "score"})
    verdict = await scan_bytes(attached("docs.zip", payload), settings)
    too_deep = next(s for s in verdict.symbols if s.name == "ARCHIVE_TOO_DEEP")
    assert too_deep.status is Status.FAIL
    # Only its 4 points count (with the headers' 2): the site chose to only score it.
    assert verdict.action is Action.TAG
    assert verdict.reason.startswith("score 6")


# --- a header folded over many lines --------------------------------------------------------


def test_a_header_folded_over_forty_thousand_lines_is_one_field():
    """Correctness only; the time is measured by bench.parsers (31 ms for the whole scan)."""
    fold = b"".join(b" w%d\r\n" % i for i in range(40_000))
    block = b"Subject: hi\r\nX-Folded: start\r\n" + fold + b"To: b@example.test\r\n"
    fields = iter_header_fields(block)
    assert [name for name, _ in fields] == [b"Subject", b"X-Folded", b"To"]
    assert fields[1][1].count(b"\r\n") == 40_001
