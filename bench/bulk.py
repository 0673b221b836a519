"""Bulk detection on real mail: campaign variants recognised, distinct mail left alone.

Run:  .venv/bin/python -m bench.bulk

Campaigns: 20 spam messages of the SpamAssassin corpus with at least 40 shingles, each sent as
variants with a different greeting name, signature, every number and every link's host
changed (a fixed seed). For N copies seen, the share of the next 20 variants that the bulk
check counts as the campaign's (a band seen at least 0.8 N times). Distinct mail: the
corpus's ham messages in order, how many would reach 20 copies (BULK_CAMPAIGN at the default
min_copies) by sharing a band with earlier ones, and the check's cost per message.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

from bench.common import load_corpus, table
from gateway.checks.bulk import MIN_SHINGLES, band_keys, shingles, signature
from gateway.message import ParsedMessage
from gateway.ml.features import extract

NAMES = ["John", "Mary", "Peter", "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace"]


def body(raw: bytes) -> str:
    return extract(ParsedMessage.parse(raw)).text.partition("\n")[2]


def variant(text: str, rng: random.Random) -> str:
    """The campaign's text with its names, numbers and link hosts changed."""
    text = re.sub(r"\d+", lambda m: str(rng.randint(1, 99999)), text)
    host = lambda _: f"http://{rng.choice('abcd')}{rng.randint(1, 999)}.example"  # noqa: E731
    text = re.sub(r"https?://[^/\s]+", host, text)
    return f"Dear {rng.choice(NAMES)},\n{text}\nRegards, {rng.choice(NAMES)} {rng.randint(1, 99)}"


def main() -> None:
    corpus = load_corpus()
    spam = [raw for name, raw in corpus if name.startswith("spam")]
    ham = [raw for name, raw in corpus if "ham" in name]
    campaigns = [t for t in (body(r) for r in spam[:300]) if len(shingles(t)) >= 40][:20]
    rng = random.Random(7)
    rows = []
    for seen in (5, 10, 20, 50):
        hits = total = 0
        for base in campaigns:
            counts: Counter[str] = Counter()
            for _ in range(seen):
                counts.update(band_keys(signature(shingles(variant(base, rng)))))
            for _ in range(20):
                keys = band_keys(signature(shingles(variant(base, rng))))
                total += 1
                hits += max(counts[k] for k in keys) >= 0.8 * seen
        rows.append([seen, f"{hits}/{total}", f"{hits / total:.1%}"])
    print(table(["copies seen", "next variants recognised", "share"], rows))
    counts: Counter[str] = Counter()
    distinct = shared = reached = 0
    started = time.perf_counter()
    for raw in ham:
        parts = shingles(body(raw))
        if len(parts) < MIN_SHINGLES:
            continue
        keys = band_keys(signature(parts))
        most = max(counts[k] for k in keys)
        distinct += 1
        shared += most >= 1
        reached += most >= 19
        counts.update(keys)
    ms = (time.perf_counter() - started) * 1000 / max(1, distinct)
    print(f"ham: {distinct} messages; {shared} share a band with an earlier one; {reached} "
          f"would reach 20 copies; {ms:.2f} ms a message (parse, features, signature)")  # fmt: skip


if __name__ == "__main__":
    main()
