"""Learned scores: every symbol's weight fitted on labelled mail, not set by hand.

In the spirit of SpamAssassin's score generation (masses/), but with a logistic regression:
each message is a row of its symbols (1 when present) and the model's spam log-odds; the fit
gives each a weight. Three things keep the result a scores file an operator can trust:

- **Held-out mail only.** The model's log-odds are trustworthy only on mail it was not
  trained on (on its own training mail it is sure of everything, and the fit would give it
  all the weight): messages whose content key is among the model's training keys are left
  out, as in ``model evaluate``.
- **Signs kept.** A symbol that adds points by hand (evidence of spam) may not learn to
  subtract them from a quirk of the sample, and the reverse: such a symbol is fitted at 0
  and the fit repeated. Symbols seen fewer than ``min_count`` times keep their hand-set
  weight (too little evidence), and so do symbols the data never shows.
- **Anchored at quarantine.** The fit is in log-odds; points are a fixed multiple of them
  (the quarantine threshold is QUARANTINE_LOG_ODDS units above the point where the model's
  symbol weighs nothing), and the model's offset puts the quarantine threshold where the
  fitted score holds ham false positives to the target rate (when the data hold enough ham
  to measure that rate), and no higher than the score of a message the model alone finds
  spam at its own threshold: the model's confident spam reaches quarantine unless other
  evidence (authentication) speaks for it.

The model's symbols become ``per_log_odds`` entries (points per unit of log-odds above an
offset, uncapped). Figures: the model alone, the overall score with the scores in force, and the
overall score with the learned scores, out of fold (5 folds: each fold scored by weights
fitted without it), so the learned figure is not flattered by its own fit.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from gateway.checks.classifier import log_odds
from gateway.config import Score, Settings
from gateway.context import Envelope, ScanContext
from gateway.errors import ConfigError
from gateway.message import ParsedMessage, crlf_line_ends
from gateway.ml.features import Features
from gateway.pipeline import Pipeline
from gateway.store import Store
from training import metrics
from training.corpus import iter_messages, label_from_path
from training.dataset import SPAM_LABELS, content_key

MODEL_SYMBOLS = ("ML_SPAM", "ML_HAM")
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")
# Checks a corpus scan leaves off: they ask the network, clamd or the shared state about
# mail that is years old (its SPF, DKIM keys and block lists are not what they were).
OFFLINE_OFF = ("antivirus", "auth", "reputation", "bulk")
FOLDS = 5
# Units of fitted log-odds between "the model's symbol weighs nothing" and quarantine: with
# quarantine at 10 points, one unit of log-odds is 2 points (tag at 5 and reject at 15 are
# then 2.5 units, a factor of 12 in odds, either side of quarantine).
QUARANTINE_LOG_ODDS = 5.0
# Ham messages above the target false-positive rate needed to place quarantine by that rate.
MIN_TAIL = 10


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled message as the policy saw it."""

    label: int  # 1 spam, 0 ham
    log_odds: float
    symbols: Mapping[str, float]  # symbol -> the score it had (hand-set scores)
    total: float  # the overall score with the scores in force


@dataclass(slots=True)
class Learned:
    """The fitted weights and how they were placed."""

    weights: dict[str, float]  # symbol -> points (scaled)
    per_log_odds: float
    offset: float  # the model's log-odds at which its symbol weighs nothing
    fitted: list[str]  # symbols whose weight was learned
    zeroed: list[str]  # fitted at 0 to keep their sign
    kept: list[str]  # too rare: hand-set weight kept
    anchor: str  # what placed the quarantine threshold


def _sample(
    label: int, symbols: Iterable[Mapping[str, Any]], total: float, model: bool = True
) -> Sample | None:
    found: dict[str, float] = {}
    odds = None if model else math.nan  # without the model: its log-odds filled in later
    for symbol in symbols:
        name = str(symbol["name"])
        if name.endswith("_ERROR"):
            continue
        if name in MODEL_SYMBOLS:
            details = symbol.get("details") or {}
            if "log_odds" in details:
                odds = float(details["log_odds"])
            elif "probability" in details:
                odds = log_odds(float(details["probability"]))
            continue
        found[name] = float(symbol.get("score", 0.0))
    if odds is None:
        return None  # the classifier did not run: nothing to weigh it against
    return Sample(label, odds, found, total)


def scan_corpus(path: Path, settings: Settings, trained: set[str]) -> tuple[list[Sample], int]:
    """Scan a labelled corpus with the offline checks, the model and the rules in force."""
    scanned, excluded = asyncio.run(_scan_corpus(path, offline(settings), trained))
    return [sample for _, sample in scanned], excluded


def scan_symbols(path: Path, settings: Settings) -> dict[str, Sample]:
    """Every labelled message's symbols by source, without the model (log-odds NaN).

    For ``model evaluate --cross``, which trains its own model on each split.
    """
    without_model = offline(settings, classifier=False)
    scanned, _ = asyncio.run(_scan_corpus(path, without_model, set(), model=False))
    return dict(scanned)


def offline(settings: Settings, classifier: bool = True) -> Settings:
    """The settings with the checks that ask the network or shared state off."""
    checks = {name: dict(section) for name, section in settings.checks.items()}
    for name in OFFLINE_OFF + (() if classifier else ("classifier",)):
        checks[name] = {**checks.get(name, {}), "enabled": False}
    return settings.model_copy(update={"checks": checks})


async def _scan_corpus(
    path: Path, settings: Settings, trained: set[str], model: bool = True
) -> tuple[list[tuple[str, Sample]], int]:
    pipeline = Pipeline.from_settings(settings)
    if model and not any(c.name == "classifier" for c in pipeline.checks):
        raise ConfigError("model scores needs the classifier ([checks.classifier] enabled)")
    scanned: list[tuple[str, Sample]] = []
    excluded = 0
    try:
        for number, (source, label, raw) in enumerate(_labelled(path)):
            raw = crlf_line_ends(raw)
            envelope = Envelope(
                id=f"scores.{number}", raw=raw, mail_from=envelope_sender(raw),
                rcpts=("postmaster@localhost",), client_ip="127.0.0.1",
                mail_options=("BODY=8BITMIME",),
            )  # fmt: skip
            ctx = ScanContext(envelope)
            if trained and content_key(ctx.features) in trained:
                excluded += 1
                continue
            verdict = (await pipeline.scan(ctx)).verdict
            symbols = (s.as_dict() for s in verdict.symbols)
            sample = _sample(label, symbols, verdict.score, model)
            if sample is not None:
                scanned.append((source, sample))
    finally:
        await pipeline.aclose()
    return scanned, excluded


def envelope_sender(raw: bytes) -> str:
    """MAIL FROM as it was: the Return-Path the delivering MTA recorded, else the From address.

    A corpus file is a delivered message; scanning it with an empty sender would make every
    one a bounce (PROTO_EMPTY_SENDER on all of them, a symbol that says nothing).
    """
    message = ParsedMessage.parse(raw)
    match = _ADDRESS.search(message.header("Return-Path") or "")
    if match:
        return match.group(0)
    return message.from_mailboxes[0].address if message.from_mailboxes else ""


def _labelled(path: Path) -> Iterator[tuple[str, int, bytes]]:
    """(source, 1 for spam or 0 for ham, raw) of each message its folder labels."""
    for source, raw in iter_messages(path):
        label = label_from_path(source)
        if label is not None:
            yield source, int(label == "spam"), raw


def from_events(
    store: Store, since: float | None, until: float | None, trained: set[str]
) -> tuple[list[Sample], int]:
    """Labelled events as the gateway scored them (every check, as it ran then)."""
    samples: list[Sample] = []
    excluded = 0
    for row in store.labelled_messages(since, until):
        snapshot = row.get("features")
        if snapshot and content_key(Features.from_dict(dict(snapshot))) in trained:
            excluded += 1
            continue
        event = store.get(row["event_id"])
        label = int(row["label"] in SPAM_LABELS)
        sample = _sample(label, event.symbols, float(event.score or 0.0))
        if sample is not None:
            samples.append(sample)
    return samples, excluded


def _matrix(samples: list[Sample], columns: list[str]) -> np.ndarray[Any, Any]:
    x = np.zeros((len(samples), len(columns) + 1))
    index = {name: i + 1 for i, name in enumerate(columns)}
    for row, sample in enumerate(samples):
        x[row, 0] = sample.log_odds
        for name in sample.symbols:
            if name in index:
                x[row, index[name]] = 1.0
    return x


def fit(
    samples: list[Sample],
    current: Mapping[str, Score],
    quarantine: float,
    target_fpr: float,
    model_threshold: float,
    min_count: int = 5,
) -> Learned:
    """Fit the weights (see the module docstring) and scale them to the quarantine threshold."""
    labels = np.array([s.label for s in samples])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("model scores needs both spam and ham among the labelled messages")
    counts = Counter(name for s in samples for name in s.symbols)
    observed: dict[str, list[float]] = {}
    for sample in samples:
        for name, score in sample.symbols.items():
            observed.setdefault(name, []).append(score)
    # The sign each symbol may take: that of its score in force (0: either).
    sign = {name: float(np.sign(np.median(scores))) for name, scores in observed.items()}
    kept = sorted(name for name, n in counts.items() if n < min_count)
    # A symbol on every message says nothing (and would act as the fit's intercept).
    columns = sorted(
        name for name, n in counts.items() if min_count <= n < len(samples) - min_count
    )
    zeroed: list[str] = []
    for _ in range(len(columns) + 1):
        x = _matrix(samples, columns)
        learner = LogisticRegression(C=1.0, max_iter=5000).fit(x, labels)
        coef = learner.coef_[0]
        wrong = [
            name
            for name, w in zip(columns, coef[1:], strict=True)
            if sign[name] and np.sign(w) not in (0.0, sign[name])
        ]
        if not wrong:
            break
        zeroed.extend(wrong)
        columns = [c for c in columns if c not in wrong]
    slope = float(coef[0])
    if slope <= 0:
        raise ConfigError("the fit gives the model's log-odds no positive weight: too few or "
                          "contradictory labels")  # fmt: skip
    decision = x[:, 1:] @ coef[1:] + x[:, 0] * slope
    ham = np.sort(decision[labels == 0])[::-1]
    allowed = math.floor(target_fpr * len(ham))
    at_fpr = float(np.nextafter(ham[allowed], np.inf)) if allowed < len(ham) else float(ham[-1])
    at_model = slope * log_odds(model_threshold)
    # Quarantine must sit at or above at_fpr (the ham false-positive target) and at or below
    # at_model (the model's confident spam reaches it). at_fpr is trusted only with MIN_TAIL
    # ham above it (a 0.1% quantile of 900 ham is the single highest one: noise); otherwise,
    # and where the two conflict, the model's own threshold (chosen at training on more ham).
    if allowed >= MIN_TAIL and at_fpr <= at_model:
        cut, anchor = at_fpr, f"ham false positives at most {target_fpr:.2%} of the fitting data"
    else:
        cut, anchor = at_model, f"the model's own threshold ({model_threshold:.4f})"
    points = quarantine / QUARANTINE_LOG_ODDS  # per unit of fitted log-odds
    # points * (decision - slope * offset) == quarantine at the cut:
    offset = (cut - QUARANTINE_LOG_ODDS) / slope
    weights = {name: round(float(w) * points, 3) for name, w in zip(columns, coef[1:], strict=True)}
    weights.update({name: 0.0 for name in zeroed})
    for name in kept:
        if name in current:
            weights[name] = current[name].weight
    return Learned(weights, round(slope * points, 4), round(offset, 4), columns, sorted(zeroed),
                   kept, anchor)  # fmt: skip


def learned_total(sample: Sample, learned: Learned) -> float:
    """The overall score of a sample under learned weights (others keep their score)."""
    total = learned.per_log_odds * (sample.log_odds - learned.offset)
    for name, score in sample.symbols.items():
        total += learned.weights.get(name, score)
    return total


def figures(
    samples: list[Sample],
    current: Mapping[str, Score],
    quarantine: float,
    target_fpr: float,
    model_threshold: float,
    min_count: int,
) -> dict[str, dict[str, float]]:
    """The model alone, the scores in force, and the learned scores, on the same folds.

    Each fold is scored by weights fitted on the other folds. Ranking figures (AUC, recall at
    a false-positive rate) are the mean over the folds, since each fold's scores carry their
    own fit's offset; what is held is counted over every message at its fold's threshold.
    """
    labels = np.array([s.label for s in samples])
    model = np.array([s.log_odds for s in samples])
    in_force = np.array([s.total for s in samples])
    learned_scores = np.zeros(len(samples))
    ranking: dict[str, list[dict[str, float]]] = {name: [] for name in ROWS}
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    for train, test in folds.split(np.zeros(len(samples)), labels):
        learned = fit([samples[i] for i in train], current, quarantine, target_fpr,
                      model_threshold, min_count)  # fmt: skip
        for i in test:
            learned_scores[i] = learned_total(samples[i], learned)
        for name, scores in zip(ROWS, (model, in_force, learned_scores), strict=True):
            ranking[name].append(metrics.ranking(labels[test], scores[test]))
    confident = model >= log_odds(model_threshold)
    result = {}
    cuts = (log_odds(model_threshold), quarantine, quarantine)
    for name, scores, cut in zip(ROWS, (model, in_force, learned_scores), cuts, strict=True):
        mean = {key: float(np.mean([f[key] for f in ranking[name]])) for key in ranking[name][0]}
        spam_confident = confident & (labels == 1)
        result[name] = {
            **mean,
            "spam_held": float(np.mean(scores[labels == 1] >= cut)),
            "ham_held": float(np.mean(scores[labels == 0] >= cut)),
            "confident_spam_held": (
                float(np.mean(scores[spam_confident] >= cut))
                if np.any(spam_confident)
                else float("nan")
            ),
        }
    return result


ROWS = ("model alone", "overall, scores in force", "overall, learned (out of fold)")


def write_scores(
    out: Path,
    current: Mapping[str, Score],
    learned: Learned,
    provenance: Mapping[str, Any],
    descriptions: Mapping[str, str],
) -> None:
    """A scores file: every symbol in force, learned weights where learned, with provenance."""
    lines = [
        "# Learned scores (mailmoat model scores). Use: [policy] scores_file = this file,",
        "# then `mailmoat config check` and a reload. Provenance:",
    ]
    lines += [f"#   {key}: {json.dumps(value)}" for key, value in provenance.items()]
    lines += [
        f"#   fitted: {', '.join(learned.fitted) or '-'}",
        f"#   fitted at 0 to keep their sign: {', '.join(learned.zeroed) or '-'}",
        f"#   hand-set weight kept (too rare): {', '.join(learned.kept) or '-'}",
        "# Symbols the data never showed keep their weight in the base scores (kept).",
        "",
    ]
    for name in MODEL_SYMBOLS:
        text = json.dumps(
            f"{learned.per_log_odds:g} points per unit of the model's spam log-odds above "
            f"{learned.offset:g} (learned)"
        )
        lines.append(f"{name} = {{ per_log_odds = {learned.per_log_odds}, log_odds_offset = "
                     f"{learned.offset}, description = {text} }}")  # fmt: skip
    names = sorted((set(current) | set(learned.weights)) - set(MODEL_SYMBOLS))
    for name in names:
        weight = learned.weights.get(name, current[name].weight if name in current else 0.0)
        how = "learned" if name in learned.weights and name not in learned.kept else "kept"
        text = current[name].description if name in current else descriptions.get(name, "")
        lines.append(
            f"{name} = {{ weight = {weight}, description = {json.dumps(f'{text} ({how})')} }}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def stamp() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
