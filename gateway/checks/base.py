"""The contract of a check: one module, one class, findings out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self, TypeVar

from pydantic import ValidationError

from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.errors import ConfigError, NotConfigured
from gateway.services import Services
from gateway.types import Finding

C = TypeVar("C", bound=CheckConfig)


class Check(Protocol):
    """What the pipeline needs of a check (Scrapy-style ``from_config`` factory).

    A check runs at end of data by default. One that can decide earlier also declares
    ``phases: ClassVar[frozenset[Phase]]`` (CONNECT, HELO, MAIL, RCPT) and implements
    ``async def run_early(self, phase: Phase, session: SessionInfo) -> Sequence[Finding]``;
    the pipeline calls it at those steps of either front (``Pipeline.early``).

    A check that waits on a server (clamd, DNS, Redis) declares ``waits_on_network:
    ClassVar[bool] = True``: the pipeline starts it first, as a task, and runs the other
    checks one after another meanwhile (``Pipeline.scan``).
    """

    name: ClassVar[str]
    symbols: ClassVar[Mapping[str, str]]

    @property
    def config(self) -> CheckConfig:
        """The check's validated section (common keys: enabled, timeout, on_error)."""
        ...

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        """Build from the ``[checks.NAME]`` table; raise NotConfigured when disabled.

        ``settings`` is there for the shared service sections a check depends on
        (``[antivirus]`` for clamd, ``[dns]`` for the resolver); a check reads nothing else.
        ``services`` hands out the shared clients (kept across reloads); without it a check
        makes its own (tools and benchmarks).
        """
        ...

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        """Inspect one message and return findings (never a verdict or a score)."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


def parse_section(name: str, model: type[C], section: Mapping[str, Any]) -> C:
    """Validate a check's section; disabled checks raise NotConfigured, bad keys ConfigError."""
    try:
        config = model.model_validate(dict(section))
    except ValidationError as exc:
        details = "; ".join(
            f"checks.{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(details) from exc
    if not config.enabled:
        raise NotConfigured(f"checks.{name}.enabled = false")
    return config
