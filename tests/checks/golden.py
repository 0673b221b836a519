"""Scan the golden messages of tests/data/messages with the real pipeline."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gateway.config import ClamdConfig, Settings
from gateway.context import Envelope, ScanContext
from gateway.pipeline import Pipeline
from gateway.types import Verdict

MESSAGES = Path(__file__).resolve().parents[1] / "data" / "messages"
EXPECTED: dict[str, list[str]] = tomllib.loads((MESSAGES / "expected.toml").read_text())


def offline_settings(
    clamd: dict[str, object] | None = None, **checks: dict[str, object]
) -> Settings:
    """Embedded defaults; the antivirus check is off unless a clamd is given."""
    sections: dict[str, dict[str, object]] = {"antivirus": {"enabled": clamd is not None}}
    sections.update(checks)
    return Settings(checks=sections, antivirus=ClamdConfig(**(clamd or {})))


async def scan_bytes(raw: bytes, settings: Settings | None = None, **envelope: object) -> Verdict:
    pipeline = Pipeline.from_settings(settings or offline_settings())
    fields: dict[str, object] = {
        "id": "0000000000000000.1",
        "raw": raw,
        "mail_from": "a@sender.test",
        "rcpts": ("bob@example.test",),
        "mail_options": ("BODY=8BITMIME",),
    }
    fields.update(envelope)
    result = await pipeline.scan(ScanContext(Envelope(**fields)))  # type: ignore[arg-type]
    return result.verdict


def symbols_with_prefix(verdict: Verdict, prefixes: tuple[str, ...]) -> set[str]:
    return {name for name in verdict.symbol_names if name.startswith(prefixes)}
