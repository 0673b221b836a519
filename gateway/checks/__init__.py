"""The check registry: an explicit, ordered tuple (no filesystem scanning)."""

from __future__ import annotations

from gateway.checks.antivirus import AntivirusCheck
from gateway.checks.auth import AuthCheck
from gateway.checks.base import Check
from gateway.checks.bulk import BulkCheck
from gateway.checks.classifier import ClassifierCheck
from gateway.checks.content import ContentCheck
from gateway.checks.headers import HeadersCheck
from gateway.checks.heuristics import HeuristicsCheck
from gateway.checks.protocol import ProtocolCheck
from gateway.checks.reputation import ReputationCheck

REGISTRY: tuple[type[Check], ...] = (
    ProtocolCheck,
    HeadersCheck,
    AntivirusCheck,
    ContentCheck,
    HeuristicsCheck,
    AuthCheck,
    ReputationCheck,
    BulkCheck,
    ClassifierCheck,
)


def _check_unique() -> None:
    seen: set[str] = set()
    for check in REGISTRY:
        if check.name in seen:
            raise ImportError(f"duplicate check name {check.name!r} in the registry")
        seen.add(check.name)


_check_unique()
