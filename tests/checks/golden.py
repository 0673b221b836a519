"""Scan the golden messages of tests/data/messages with the real pipeline."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gateway.config import ClamdConfig, DnsConfig, Settings
from gateway.context import Envelope, ScanContext
from gateway.pipeline import Pipeline
from gateway.types import Verdict

MESSAGES = Path(__file__).resolve().parents[1] / "data" / "messages"
EXPECTED: dict[str, list[str]] = tomllib.loads((MESSAGES / "expected.toml").read_text())


def offline_settings(
    clamd: dict[str, object] | None = None,
    dns: dict[str, object] | None = None,
    **checks: dict[str, object],
) -> Settings:
    """Embedded defaults; the checks needing clamd or DNS are off unless those are given."""
    sections: dict[str, dict[str, object]] = {
        "antivirus": {"enabled": clamd is not None},
        "auth": {"enabled": dns is not None},
        "classifier": {"enabled": False},
    }
    for name, section in checks.items():
        sections[name] = {**sections.get(name, {}), **section}
    return Settings(
        rules={"enabled": False},  # tests use tests/data/rules/, never the production rules/
        checks=sections,
        antivirus=ClamdConfig(**(clamd or {})),
        dns=DnsConfig(**(dns or {})),
        server={"hostname": "mx.test"},
    )


async def scan_bytes(raw: bytes, settings: Settings | None = None, **envelope: object) -> Verdict:
    verdict, _ = await scan_with_context(raw, settings, **envelope)
    return verdict


async def scan_with_context(
    raw: bytes, settings: Settings | None = None, **envelope: object
) -> tuple[Verdict, ScanContext]:
    pipeline = Pipeline.from_settings(settings or offline_settings())
    fields: dict[str, object] = {
        "id": "0000000000000000.1",
        "raw": raw,
        "mail_from": "a@sender.test",
        "rcpts": ("bob@example.test",),
        "mail_options": ("BODY=8BITMIME",),
    }
    fields.update(envelope)
    ctx = ScanContext(Envelope(**fields))  # type: ignore[arg-type]
    result = await pipeline.scan(ctx)
    await pipeline.aclose()
    return result.verdict, ctx


def symbols_with_prefix(verdict: Verdict, prefixes: tuple[str, ...]) -> set[str]:
    return {name for name in verdict.symbol_names if name.startswith(prefixes)}
