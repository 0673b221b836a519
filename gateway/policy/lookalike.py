"""Lookalike domains: one edit away from a protected one, or equal after confusables."""

from __future__ import annotations

from functools import lru_cache


def _damerau(a: str, b: str) -> int:
    """Optimal string alignment distance (Damerau-Levenshtein), small strings only."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "@": "a", "$": "s"})


@lru_cache(maxsize=8192)
def is_lookalike(candidate: str, protected: frozenset[str]) -> bool:
    """A near-miss of a protected domain: one edit away, or equal after confusables (0->o).

    Cached: the same senders come again and again, and each answer is a few edit distances.
    """
    cand = candidate.lower().rstrip(".")
    squashed = cand.replace("rn", "m").replace("vv", "w").translate(_CONFUSABLE)
    for real in protected:
        if cand == real:
            return False
    for real in protected:
        if squashed == real.replace("rn", "m").translate(_CONFUSABLE) or (
            len(real) >= 5 and abs(len(cand) - len(real)) <= 1 and _damerau(cand, real) == 1
        ):
            return True
    return False
