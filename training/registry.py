"""The model registry: artefact directories under models/, CURRENT, and a history for rollback."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.ml.model import CURRENT_FILE, load_model, read_metadata

HISTORY_FILE = "HISTORY"
EVALUATION_FILE = "evaluation.json"
# The content keys (dataset.content_key) of a model's training messages, one per line,
# gzipped: evaluate leaves them out of a test set (an overlap would flatter the model).
TRAINING_KEYS_FILE = "training-keys.txt.gz"


def write_training_keys(directory: Path, keys: Iterable[str]) -> None:
    """Record what a model was trained on."""
    data = "".join(f"{key}\n" for key in sorted(set(keys))).encode()
    (directory / TRAINING_KEYS_FILE).write_bytes(gzip.compress(data, mtime=0))


def training_keys(directory: Path) -> set[str] | None:
    """What a model was trained on; None for a model trained before keys were kept."""
    path = directory / TRAINING_KEYS_FILE
    if not path.exists():
        return None
    return set(gzip.decompress(path.read_bytes()).decode().split())


def current_id(models: Path) -> str | None:
    """The id in service, or None."""
    try:
        return (models / CURRENT_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def artefacts(models: Path) -> list[dict[str, Any]]:
    """Metadata of every artefact, oldest first."""
    found = []
    for directory in sorted(p for p in models.iterdir() if p.is_dir()) if models.is_dir() else []:
        try:
            found.append(read_metadata(directory))
        except ConfigError:
            continue
    return sorted(found, key=lambda m: m.get("created", 0))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_current(models: Path, model_id: str) -> None:
    """Put an artefact in service (after loading it to prove it loads) and remember the old one."""
    load_model(models / model_id)
    previous = current_id(models)
    if previous and previous != model_id:
        with (models / HISTORY_FILE).open("a") as handle:
            handle.write(previous + "\n")
    _write_atomically(models / CURRENT_FILE, model_id + "\n")


def rollback(models: Path) -> str:
    """Put the previous model back in service; returns its id."""
    history_path = models / HISTORY_FILE
    history = history_path.read_text().split() if history_path.exists() else []
    if not history:
        raise ConfigError("no previous model to roll back to")
    previous = history.pop()
    load_model(models / previous)
    _write_atomically(models / CURRENT_FILE, previous + "\n")
    _write_atomically(history_path, "".join(h + "\n" for h in history))
    return previous


def evaluation(models: Path, model_id: str) -> dict[str, Any] | None:
    """The last evaluation of an artefact, if it was evaluated."""
    path = models / model_id / EVALUATION_FILE
    return json.loads(path.read_text()) if path.exists() else None
