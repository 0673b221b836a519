"""DKIM (RFC 6376) verification with dkimpy; keys fetched through Mailmoat's DnsClient.

Each signature's key is fetched first (async, cached), so a DNS failure is told apart from
a bad signature; dkimpy then verifies with that key and no DNS of its own: on the event loop
for a message of common size (the hand-off to a thread would cost more than the work), in a
worker thread for a big one (hashing its body takes a while).

dkimpy does RSA in pure Python (0.3 ms a signature, a quarter of the auth check's CPU);
its verification function is replaced by OpenSSL's, through ``cryptography`` (20 us).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.clients.dns import DnsClient, DnsTempError

# Messages up to this size are verified on the event loop, bigger ones in a worker thread.
INLINE_BYTES = 64 * 1024

_PURE_PYTHON_VERIFY = dkim.RSASSA_PKCS1_v1_5_verify
# rsa-sha1 is still a valid DKIM algorithm to verify (RFC 8301 lets verifiers accept it).
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha1": hashes.SHA1(),  # noqa: S303 - verifying what senders signed, not choosing it
}


@lru_cache(maxsize=1024)
def _public_key(exponent: int, modulus: int) -> rsa.RSAPublicKey:
    """OpenSSL's key object (checking the numbers costs more than a verification: cached)."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """RSASSA-PKCS1-v1_5 verification (RFC 8017 8.2.2) by OpenSSL, for dkimpy.

    The same contract as ``dkim.crypto.RSASSA_PKCS1_v1_5_verify``: a hash object with the
    signed data, the signature, dkimpy's parsed key; True when the signature is valid. A key
    OpenSSL will not load (a degenerate modulus) goes to dkimpy's own code, as before.
    """
    algorithm = _HASHES.get(digest.name)
    try:
        verifier = _public_key(public_key["publicExponent"], public_key["modulus"])
    except ValueError:
        algorithm = None
    if algorithm is None:
        return bool(_PURE_PYTHON_VERIFY(digest, signature, public_key))
    try:
        verifier.verify(signature, digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


# dkimpy calls the function by its name in the dkim module (for DKIM and ARC alike).
dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's outcome. ``status``: valid invalid expired nokey temperror permerror."""

    status: str
    domain: str
    selector: str
    algorithm: str
    reason: str = ""

    @property
    def result(self) -> str:
        """The RFC 8601 result keyword."""
        return {
            "valid": "pass",
            "invalid": "fail",
            "expired": "fail",
            "nokey": "permerror",
            "temperror": "temperror",
        }.get(self.status, "permerror")


class _Recorder(logging.Handler):
    """Keeps what dkimpy logs at error level: its only report of key problems."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_END_OF_HEADER = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")


def split_for_dkim(raw: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse (headers, body with CRLF line ends), with the body left whole.

    rfc822_parse splits the whole message into lines by a regex and joins the body again:
    9.4 ms for a 1 MB message, on the event loop (5% of the peers benchmark's CPU). Only the
    header block is handed to it here (1.3 ms in all); the body is kept as it is, or has its
    bare LFs made CRLF when it has some. Small messages cost the same either way.
    """
    end = _END_OF_HEADER.search(raw)
    if end is None or raw.startswith((b"\n", b"\r\n")):
        whole: tuple[list[list[bytes]], bytes] = dkim.rfc822_parse(raw)
        return whole  # no body, or no header: as dkimpy would
    headers: list[list[bytes]] = dkim.rfc822_parse(raw[: end.end()])[0]
    body = raw[end.end() :]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LINE_END.sub(b"\r\n", body)
    return headers, body


class ParsedForDkim:
    """A message parsed once by dkimpy, its signatures verified one by one.

    dkimpy logs to a logger of our own (not registered, so concurrent verifications never
    mix reports) at ERROR: its debug lines cost 8% of a verification.
    """

    def __init__(self, raw: bytes, minkey: int) -> None:
        self.recorder = _Recorder()
        logger = logging.Logger("dkimpy", logging.ERROR)  # noqa: LOG001 - private
        logger.addHandler(self.recorder)
        self.dkim = dkim.DKIM(None, logger=logger, minkey=minkey)
        self.dkim.headers, self.dkim.body = split_for_dkim(raw)  # DKIMException: unparseable

    def signatures(self) -> list[dict[bytes, bytes]]:
        """The tags of every DKIM-Signature header, topmost first (unparseable ones as {})."""
        found: list[dict[bytes, bytes]] = []
        for name, value in self.dkim.headers:
            if name.lower() == b"dkim-signature":
                try:
                    found.append(parse_tag_value(value))
                except InvalidTagValueList:
                    found.append({})
        return found

    def verify(self, index: int, key: bytes) -> tuple[bool, str, list[str]]:
        """(valid, dkimpy's exception text, what it logged) for signature ``index``."""
        self.recorder.messages = []
        try:
            ok = self.dkim.verify(idx=index, dnsfunc=lambda name, timeout=5: key)
            return bool(ok), "", self.recorder.messages
        except dkim.DKIMException as exc:
            return False, str(exc), self.recorder.messages


def _verify_apart(raw: bytes, index: int, key: bytes, minkey: int) -> tuple[bool, str, list[str]]:
    """Verify with a parse of its own: for a worker thread, where nothing may be shared."""
    try:
        return ParsedForDkim(raw, minkey).verify(index, key)
    except dkim.DKIMException as exc:
        return False, str(exc), []


async def verify_dkim(
    raw: bytes, client: DnsClient, max_signatures: int, minkey: int
) -> list[DkimResult]:
    """Verify up to ``max_signatures`` signatures; an empty list means the message has none."""
    if b"dkim-signature:" not in raw[:262144].lower():
        return []  # unsigned: nothing to parse
    try:
        parsed = ParsedForDkim(raw, minkey)  # header parsing only: cheap, on the loop
    except dkim.DKIMException:
        return []
    tags_list = parsed.signatures()[:max_signatures]
    # A message of common size is verified on the loop with this parse; a big one in threads.
    shared = parsed if len(raw) <= INLINE_BYTES else None
    return list(
        await asyncio.gather(
            *(_one(raw, i, t, client, minkey, shared) for i, t in enumerate(tags_list))
        )
    )


async def _one(
    raw: bytes,
    index: int,
    tags: dict[bytes, bytes],
    client: DnsClient,
    minkey: int,
    shared: ParsedForDkim | None,
) -> DkimResult:
    domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
    selector = tags.get(b"s", b"").decode("ascii", "replace")
    algorithm = tags.get(b"a", b"").decode("ascii", "replace")
    if not domain or not selector:
        return DkimResult("permerror", domain, selector, algorithm, "missing d= or s=")
    try:
        records = await client.txt(f"{selector}._domainkey.{domain}")
    except DnsTempError as exc:
        return DkimResult("temperror", domain, selector, algorithm, str(exc))
    keys = [r for r in records if b"p=" in r]
    if not keys:
        return DkimResult("nokey", domain, selector, algorithm, "no key published")
    if shared is not None:  # between awaits: no other signature is verified meanwhile
        ok, error, logged = shared.verify(index, keys[0])
    else:
        ok, error, logged = await asyncio.to_thread(_verify_apart, raw, index, keys[0], minkey)
    if ok:
        return DkimResult("valid", domain, selector, algorithm)
    if "x= value is past" in error:
        return DkimResult("expired", domain, selector, algorithm, "signature expired")
    if "body hash mismatch" in error:
        return DkimResult("invalid", domain, selector, algorithm, "body hash")
    if error:
        return DkimResult("permerror", domain, selector, algorithm, error[:200])
    if logged:  # dkimpy logs, then returns False, for a key it cannot use
        return DkimResult("invalid", domain, selector, algorithm, f"key: {logged[-1][:150]}")
    return DkimResult("invalid", domain, selector, algorithm, "signature")
