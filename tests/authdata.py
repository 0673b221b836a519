"""Keys, zones and signed messages for the sender-authentication tests (all made here)."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim
import nacl.signing

from tests.dnsserver import Zone, txt

SENDER_IP = "192.0.2.10"
LIST_IP = "198.51.100.7"
OTHER_IP = "203.0.113.99"


@dataclass(frozen=True)
class Keys:
    rsa_private: bytes
    rsa_public_b64: str
    ed_private_b64: bytes
    ed_public_b64: str
    list_private: bytes
    list_public_b64: str


def _rsa(directory: Path, name: str) -> tuple[bytes, str]:
    key = directory / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key.read_bytes(), base64.b64encode(der).decode()


def make_keys(directory: Path) -> Keys:
    rsa_private, rsa_public = _rsa(directory, "sender")
    list_private, list_public = _rsa(directory, "list")
    ed = nacl.signing.SigningKey.generate()
    return Keys(
        rsa_private=rsa_private,
        rsa_public_b64=rsa_public,
        ed_private_b64=base64.b64encode(bytes(ed)),
        ed_public_b64=base64.b64encode(bytes(ed.verify_key)).decode(),
        list_private=list_private,
        list_public_b64=list_public,
    )


def make_zone(keys: Keys) -> Zone:
    zone = Zone()
    add = zone.add
    # SPF
    add("sender.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"))
    add("softfail.test", "TXT", txt("v=spf1 ~all"))
    add("neutral.test", "TXT", txt("v=spf1 ?all"))
    add("include.test", "TXT", txt("v=spf1 include:_spf.sender.test -all"))
    add("_spf.sender.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"))
    add("redirect.test", "TXT", txt("v=spf1 redirect=sender.test"))
    add("a.test", "TXT", txt("v=spf1 a -all"))
    add("a.test", "A", SENDER_IP)
    add("mx.test", "TXT", txt("v=spf1 mx -all"))
    add("mx.test", "MX", "10 mail.mx.test.")
    add("mail.mx.test", "A", SENDER_IP)
    add("exists.test", "TXT", txt("v=spf1 exists:%{i}.allow.exists.test -all"))
    add(f"{SENDER_IP}.allow.exists.test", "A", "127.0.0.2")
    add("broken.test", "TXT", txt("v=spf1 ip4:not-an-ip -all"))
    for n in range(12):  # a chain of includes past the 10-lookup limit (RFC 7208 4.6.4)
        add(f"l{n}.loop.test", "TXT", txt(f"v=spf1 include:l{n + 1}.loop.test -all"))
    add("loop.test", "TXT", txt("v=spf1 include:l0.loop.test -all"))
    add("list.test", "TXT", txt(f"v=spf1 ip4:{LIST_IP} -all"))
    # Huge answers: 60 TXT records (15 KB, truncated over UDP, fetched again over TCP),
    # and one SPF record of 8 KB.
    add("huge.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"),
        *(txt(f"verification-{n}=" + "z" * 240) for n in range(60)))  # fmt: skip
    networks = " ".join(f"ip4:198.51.{n // 256}.{n % 256}" for n in range(400))
    add("hugespf.test", "TXT", txt(f"v=spf1 {networks} ip4:{SENDER_IP} -all"))
    zone.drop.add("slow.test.")
    zone.servfail.add("servfail.test.")
    # DKIM keys
    add("sel._domainkey.sender.test", "TXT", txt(f"v=DKIM1; k=rsa; p={keys.rsa_public_b64}"))
    add("ed._domainkey.sender.test", "TXT", txt(f"v=DKIM1; k=ed25519; p={keys.ed_public_b64}"))
    add("arc._domainkey.list.test", "TXT", txt(f"v=DKIM1; k=rsa; p={keys.list_public_b64}"))
    add("sel._domainkey.sub.parent.test", "TXT", txt(f"v=DKIM1; k=rsa; p={keys.rsa_public_b64}"))
    # DMARC
    add("_dmarc.sender.test", "TXT", txt("v=DMARC1; p=reject; rua=mailto:d@sender.test"))
    add("_dmarc.quarantine.test", "TXT", txt("v=DMARC1; p=quarantine"))
    add("quarantine.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"))
    add("_dmarc.parent.test", "TXT", txt("v=DMARC1; p=none; sp=reject"))
    add("sub.parent.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"))
    add("_dmarc.pct.test", "TXT", txt("v=DMARC1; p=reject; pct=0"))
    add("pct.test", "TXT", txt(f"v=spf1 ip4:{SENDER_IP} -all"))
    add("_dmarc.list.test", "TXT", txt("v=DMARC1; p=none"))
    return zone


def message(from_addr: str = "alice@sender.test", subject: str = "Quarterly report",
            body: str = "Numbers attached.\r\n") -> bytes:  # fmt: skip
    return (
        f"From: Alice <{from_addr}>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <auth-1@sender.test>\r\n"
        f"\r\n{body}"
    ).encode()


def sign_rsa(raw: bytes, keys: Keys, domain: str = "sender.test", selector: str = "sel") -> bytes:
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    signature = dkim.sign(
        raw, selector.encode(), domain.encode(), keys.rsa_private, include_headers=headers
    )
    return signature + raw


def sign_ed25519(raw: bytes, keys: Keys) -> bytes:
    signature = dkim.sign(
        raw, b"ed", b"sender.test", keys.ed_private_b64, signature_algorithm=b"ed25519-sha256",
        include_headers=[b"from", b"to", b"subject"],
    )  # fmt: skip
    return signature + raw


def through_mailing_list(signed: bytes, keys: Keys) -> bytes:
    """What a list does: rewrite the subject, add a footer, record its checks, seal with ARC."""
    head, _, body = signed.partition(b"\r\n\r\n")
    head = head.replace(b"Subject: ", b"Subject: [team] ")
    body = body + b"-- \r\nteam mailing list\r\n"
    results = b"Authentication-Results: list.test; dkim=pass header.d=sender.test; spf=pass\r\n"
    modified = results + head + b"\r\n\r\n" + body
    seal = dkim.arc_sign(modified, b"arc", b"list.test", keys.list_private, b"list.test")
    return b"".join(seal) + modified
