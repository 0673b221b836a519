"""Bulk and campaign detection: the same text arriving many times, however it is varied.

Each message's body text is normalised (lower case, digits to 0, links to their domain),
cut into shingles of ``SHINGLE`` words, and summarised by a MinHash signature (``HASHES``
values: two texts agree on a value with the probability of their Jaccard similarity). The
signature's bands (``BANDS`` of ``ROWS`` values) are counted across the site for
``window_hours`` in the shared state (Redis with ``[redis] url``; without it, each worker's
memory): near-duplicates share a band with high probability, so a campaign's copies count
together even when names, numbers and links change. A message whose band has been seen at
least ``min_copies`` times gets ``BULK_CAMPAIGN``, and one whose band came from at least
``min_senders`` envelope senders ``BULK_MANY_SENDERS`` (distinct senders counted with a
HyperLogLog in Redis, exactly in memory). Bulk is not spam by itself (newsletters are bulk,
from one sender): the symbols are scores that rules and the other checks weigh.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from gateway.checks.base import parse_section
from gateway.config import CheckConfig, PositiveFloat, Settings
from gateway.context import ScanContext
from gateway.services import Services
from gateway.shared_state import SharedState
from gateway.types import Finding, Status

SHINGLE = 4  # words per shingle
BANDS, ROWS = 16, 4
HASHES = BANDS * ROWS
MIN_SHINGLES = 8  # shorter texts ("Hi there.") say too little to be counted
MAX_TEXT = 20_000  # characters of body text looked at
PRIME = 4_294_967_311  # the smallest prime above 2**32: the hash permutations' modulus
_RANDOM = np.random.default_rng(20261202)  # fixed: every node computes the same signature
_A = _RANDOM.integers(1, 2**31, HASHES, dtype=np.uint64)
_B = _RANDOM.integers(0, 2**31, HASHES, dtype=np.uint64)
_URL = re.compile(r"https?://([^/\s\"'<>]+)[^\s\"'<>]*", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")


class BulkConfig(CheckConfig):
    """``[checks.bulk]``: how many copies make a campaign, and for how long they count."""

    min_copies: Annotated[int, Field(ge=2)] = 20
    min_senders: Annotated[int, Field(ge=2, le=16)] = 5
    window_hours: PositiveFloat = 24.0
    # Counting is a score, never a reason to defer mail.
    on_error: Literal["tempfail", "accept", "quarantine"] = "accept"
    timeout: PositiveFloat = 2.0


def shingles(text: str) -> list[str]:
    """The text's normalised word shingles."""
    text = _URL.sub(lambda m: f" url {m.group(1).lower()} ", text[:MAX_TEXT])
    words = _WORD.findall(_DIGIT.sub("0", text.lower()))  # digits stay word characters
    return [" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)]


def signature(parts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """The MinHash signature of a set of shingles (HASHES values)."""
    hashed = np.fromiter((zlib.crc32(p.encode()) for p in set(parts)), dtype=np.uint64)
    return ((np.outer(_A, hashed) + _B[:, None]) % PRIME).min(axis=1)  # type: ignore[no-any-return]


def band_keys(sig: np.ndarray[Any, np.dtype[np.uint64]]) -> list[str]:
    """One key per band: near-duplicates share at least one with high probability."""
    return [
        f"bulk:{band}:" + hashlib.blake2b(sig[band * ROWS : (band + 1) * ROWS].tobytes(),
                                          digest_size=8).hexdigest()
        for band in range(BANDS)
    ]  # fmt: skip


@dataclass(slots=True)
class BulkCheck:
    """Counts near-duplicate texts across the site."""

    name: ClassVar[str] = "bulk"
    waits_on_network: ClassVar[bool] = True  # started first (Pipeline.scan)
    symbols: ClassVar[Mapping[str, str]] = {
        "BULK_CAMPAIGN": "The same text (allowing for changed names, numbers and links) came "
        "at least min_copies times in the window",
        "BULK_MANY_SENDERS": "The same text came from at least min_senders envelope senders "
        "in the window (a newsletter has one; a botnet's campaign has many)",
    }
    config: BulkConfig
    state: SharedState

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        config = parse_section(cls.name, BulkConfig, section)
        return cls(config, (services or Services()).shared(settings.redis))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        body = ctx.features.text.partition("\n")[2]
        parts = shingles(body)
        if len(parts) < MIN_SHINGLES:
            return []
        sender = ctx.envelope.mail_from.lower() or "<>"
        copies, senders = await self.state.count(band_keys(signature(parts)), sender,
                                                 self.config.window_hours * 3600)  # fmt: skip
        found = []
        if copies >= self.config.min_copies:
            found.append(Finding(self.name, "BULK_CAMPAIGN", Status.FAIL, {"copies": copies}))
        if senders >= self.config.min_senders:
            found.append(Finding(self.name, "BULK_MANY_SENDERS", Status.FAIL,
                                 {"senders": senders, "copies": copies}))  # fmt: skip
        return found

    async def aclose(self) -> None:
        """The shared state is the gateway's: nothing of its own to close."""
