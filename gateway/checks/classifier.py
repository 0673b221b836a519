"""The spam classifier: a calibrated probability from the model in service, as ML_SPAM/ML_HAM."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field

from gateway.checks.base import parse_section
from gateway.config import SHIPPED, CheckConfig, Settings
from gateway.context import ScanContext
from gateway.ml.model import SpamModel, current_model_dir, load_model, seeded_registry
from gateway.services import Services
from gateway.types import Effect, Finding, Status

# Messages whose features take longer than this to classify go to a worker thread.
THREAD_ABOVE_CHARS = 20_000
# The log-odds a learned scores file multiplies are bounded: a probability of exactly 0 or
# 1 (or within float rounding of them) must not weigh without limit.
MAX_LOG_ODDS = 12.0


def log_odds(probability: float) -> float:
    """ln(p / (1 - p)), bounded by MAX_LOG_ODDS either way."""
    p = min(max(probability, 1e-12), 1 - 1e-12)
    return max(-MAX_LOG_ODDS, min(MAX_LOG_ODDS, math.log(p / (1 - p))))


class ClassifierConfig(CheckConfig):
    """``[checks.classifier]``."""

    # The model registry, a state directory filled from the shipped models on first use.
    models_dir: Path = Path("var/models")
    # A model id under models_dir; empty: the one named by models_dir/CURRENT.
    model: str = ""
    # Override the model's own threshold (chosen at training for the target FPR).
    threshold: float | None = Field(default=None, gt=0, lt=1)


@dataclass
class ClassifierCheck:
    """ML_SPAM above the threshold, ML_HAM below; the score scales with the probability."""

    name: ClassVar[str] = "classifier"
    symbols: ClassVar[Mapping[str, str]] = {
        "ML_SPAM": "The model says spam (details: probability, model)",
        "ML_HAM": "The model says ham (details: probability, model)",
    }
    config: ClassifierConfig
    model: SpamModel

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        config = parse_section(cls.name, ClassifierConfig, section)
        models = seeded_registry(config.models_dir, SHIPPED / "models")
        directory = models / config.model if config.model else current_model_dir(models)
        return cls(config, load_model(directory))

    @property
    def threshold(self) -> float:
        """The spam threshold in force."""
        return self.config.threshold or self.model.threshold

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        features = ctx.features
        if len(features.text) > THREAD_ABOVE_CHARS:
            probability = await asyncio.to_thread(self.model.probability, features)
        else:
            probability = self.model.probability(features)
        threshold = self.threshold
        odds = round(log_odds(probability), 4)
        detail: dict[str, Any] = {
            "probability": round(probability, 6),
            "model": self.model.id,
            "threshold": threshold,
            "log_odds": odds,
        }
        # The hand-set weight: half at the threshold, all of it at certainty (factor); a
        # learned scores file weighs the log-odds instead (per_log_odds).
        if probability >= threshold:
            factor = round(0.5 + 0.5 * (probability - threshold) / (1 - threshold), 4)
            detail["factor"] = factor
            effect = Effect(factor=factor, log_odds=odds)
            return [Finding(self.name, "ML_SPAM", Status.FAIL, detail, effect)]
        factor = round((threshold - probability) / threshold, 4)
        detail["factor"] = factor
        effect = Effect(factor=factor, log_odds=odds)
        return [Finding(self.name, "ML_HAM", Status.PASS, detail, effect)]

    async def aclose(self) -> None:
        return None
