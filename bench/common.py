"""Shared helpers for benchmarks: the corpus, percentiles, a table printer, a clamd."""

from __future__ import annotations

import os
import statistics
import tarfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The shared corpus sits beside the checkout (../shared); MAILMOAT_CORPUS overrides.
CORPUS = Path(
    os.environ.get(
        "MAILMOAT_CORPUS", ROOT.parent / "shared" / "corpora" / "spamassassin-public.tar.gz"
    )
)


def load_corpus(limit: int | None = None) -> list[tuple[str, bytes]]:
    """(relative path, raw bytes) of the SpamAssassin public corpus, mbox 'From ' line dropped."""
    messages: list[tuple[str, bytes]] = []
    with tarfile.open(CORPUS) as archive:
        for member in archive:
            if not member.isfile():
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            data = handle.read()
            if data.startswith(b"From "):
                data = data.partition(b"\n")[2]
            messages.append((member.name.split("/", 1)[1], data))
            if limit is not None and len(messages) >= limit:
                break
    return messages


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
