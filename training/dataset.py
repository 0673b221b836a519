"""Datasets: labelled feature records from the event store and from corpora, deduplicated, split.

A dataset is a gzipped JSON-lines file; each line is one message:
``{"id", "source", "label" ("spam"|"ham"), "time", "split" ("train"|"test"), "features"}``.
Features are computed by ``gateway.ml.features`` (the one feature function), so a model
trained here sees what the gateway computes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from gateway.message import ParsedMessage
from gateway.ml.features import FEATURE_VERSION, Features, extract
from gateway.store import Store
from training.corpus import iter_messages, label_from_path

SPAM_LABELS = {"spam", "phish", "malware"}


@dataclass(frozen=True, slots=True)
class Record:
    """One labelled message of a dataset."""

    id: str
    source: str
    label: str
    time: float
    features: Features
    split: str = "train"

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "source": self.source,
                "label": self.label,
                "time": self.time,
                "split": self.split,
                "features": self.features.to_dict(),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> Record:
        data = json.loads(line)
        return cls(
            data["id"], data["source"], data["label"], float(data["time"]),
            Features.from_dict(data["features"]), data["split"],
        )  # fmt: skip


def message_time(message: ParsedMessage) -> float:
    """The Date header as a timestamp (0 when absent or unparsable)."""
    value = message.header("Date")
    try:
        return parsedate_to_datetime(value).timestamp() if value else 0.0
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


def from_corpus(path: Path) -> Iterator[Record]:
    """Records of a corpus whose directory names say spam or ham (e.g. spam-2/, easy-ham-1/)."""
    for source, raw in iter_messages(path):
        label = label_from_path(source)
        if label is None:
            continue
        message = ParsedMessage.parse(raw)
        digest = hashlib.sha256(raw).hexdigest()[:24]
        yield Record(digest, f"corpus:{source}", label, message_time(message), extract(message))


def from_events(
    store: Store, since: float | None, until: float | None, left_out: list[str] | None = None
) -> Iterator[Record]:
    """Records of events with an analyst label, from their feature snapshot or raw message.

    An event with neither (no check read its features and its raw was not kept or has
    expired, or its snapshot is of an older feature version) cannot be featurised: its id
    goes to ``left_out``, for the caller to say so.
    """
    for row in store.labelled_messages(since, until):
        features: Features | None = None
        snapshot = row.get("features")
        if snapshot and snapshot.get("version") == FEATURE_VERSION:
            features = Features.from_dict(snapshot)
        elif row.get("raw") is not None:
            features = extract(ParsedMessage.parse(row["raw"]))
        if features is None:
            if left_out is not None:
                left_out.append(str(row["event_id"]))
            continue
        label = "spam" if row["label"] in SPAM_LABELS else "ham"
        yield Record(
            f"event:{row['event_id']}", f"event:{row['source']}", label, row["time"], features
        )


def content_key(features: Features) -> str:
    """What two copies of one message share, however they were collected (a corpus file,
    an event's snapshot): the hash of its text and tokens."""
    return hashlib.sha256((features.text + "\0" + " ".join(features.tokens)).encode()).hexdigest()


def deduplicate(records: Iterable[Record]) -> list[Record]:
    """Keep the first of records with the same features (reposts, retries, duplicates)."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = content_key(record.features)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def assign_split(records: list[Record], how: str, test_fraction: float, seed: int) -> list[Record]:
    """'md5' (the SpamAssassin fixed split), 'time' (test = newest), or 'seed' (random)."""
    from dataclasses import replace

    if how == "md5":

        def is_test(r: Record) -> bool:
            relative = r.source.split(":", 1)[1]
            return int(hashlib.md5(relative.encode()).hexdigest(), 16) % 5 == 0  # noqa: S324

        return [replace(r, split="test" if is_test(r) else "train") for r in records]
    if how == "time":
        ordered = sorted(records, key=lambda r: r.time)
        cut = int(len(ordered) * (1 - test_fraction))
        return [replace(r, split="train" if i < cut else "test") for i, r in enumerate(ordered)]
    if how == "seed":
        rng = random.Random(seed)  # noqa: S311 - a reproducible split, not a secret
        return [
            replace(r, split="test" if rng.random() < test_fraction else "train") for r in records
        ]
    raise ValueError(f"unknown split {how!r} (md5, time or seed)")


def write(records: list[Record], path: Path, description: dict[str, Any]) -> dict[str, Any]:
    """Write the dataset and a summary beside it (<name>.json); return the summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
    counts = Counter(f"{r.split}_{r.label}" for r in records)
    times = [r.time for r in records if r.time > 0]
    summary = {
        **description,
        "path": str(path),
        "created": time.time(),
        "feature_version": FEATURE_VERSION,
        "counts": dict(sorted(counts.items())),
        "window": [min(times), max(times)] if times else None,
    }
    path.with_suffix("").with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def read(path: Path) -> list[Record]:
    """Load a dataset file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [Record.from_json(line) for line in handle if line.strip()]
