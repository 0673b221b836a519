"""Cross-source evaluation: train on some sources, test on others, beside the plain baseline.

The in-corpus split says little (AUC 0.9999 for almost anything): what matters is mail
unlike the training mail. Each split trains a fresh Mailmoat model and the plain baseline
(TF-IDF over the raw text + logistic regression) on the same messages and tests both on
messages from other sources:

- sources: train on the ``easy`` ham folders and the first spam folder, test on the ``hard``
  ham folders and the other spam folders (for the SpamAssassin layout: easy_ham + spam ->
  hard_ham + spam_2);
- by period: train on the older 70% (Date header), test on the newest 30%;
- leave one pair of folders out: for each ham folder and each spam folder, train on every
  other folder, test on that pair.

Figures per split and model: ROC AUC, spam recall at 0.1% and 1% ham FPR, and the ham FPR
when 90% of spam is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from gateway.checks.classifier import log_odds
from gateway.config import Score, Settings, load_scores
from gateway.errors import ConfigError
from gateway.message import ParsedMessage
from gateway.ml.features import Features, extract
from gateway.ml.model import build_pipeline
from training import scores
from training.corpus import iter_messages, label_from_path
from training.dataset import message_time
from training.metrics import ranking
from training.scores import Sample

SPAM_CATCH = 0.90  # the spam share at which the ham false-positive rate is reported


@dataclass(frozen=True, slots=True)
class Message:
    source: str
    folder: str
    label: int  # 1 spam, 0 ham
    time: float
    raw: bytes
    features: Features


@dataclass(frozen=True, slots=True)
class Split:
    name: str
    train: list[Message]
    test: list[Message]


def load(path: Path) -> list[Message]:
    """The corpus's labelled messages, with their folder (the first path component)."""
    messages = []
    for source, raw in iter_messages(path):
        label = label_from_path(source)
        if label is None:
            continue
        parsed = ParsedMessage.parse(raw)
        folder = source.split("/")[0] if "/" in source else ""
        messages.append(Message(source, folder, int(label == "spam"), message_time(parsed), raw,
                                extract(parsed)))  # fmt: skip
    return messages


def splits(messages: list[Message]) -> Iterator[Split]:
    """The cross-source splits this corpus allows (each with both classes on both sides)."""
    ham = sorted({m.folder for m in messages if m.label == 0})
    spam = sorted({m.folder for m in messages if m.label == 1})

    def split(name: str, is_test: Callable[[Message], bool]) -> Split | None:
        train = [m for m in messages if not is_test(m)]
        test = [m for m in messages if is_test(m)]
        both = all({m.label for m in part} == {0, 1} for part in (train, test))
        return Split(name, train, test) if both else None

    candidates = []
    easy, hard = [f for f in ham if "easy" in f], [f for f in ham if "hard" in f]
    if easy and hard and len(spam) >= 2:
        candidates.append(split(f"sources: {' + '.join(easy)} + {spam[0]} -> "
                                f"{' + '.join(hard)} + {' + '.join(spam[1:])}",
                                lambda m: m.folder in hard or m.folder in spam[1:]))  # fmt: skip
    dated = sorted(m.time for m in messages if m.time > 0)
    if dated:
        cut = dated[int(len(dated) * 0.7)]
        candidates.append(split("by period: older 70% -> newest 30%", lambda m: m.time >= cut))
    if len(ham) >= 2 and len(spam) >= 2:
        for h in ham:
            for s in spam:
                candidates.append(split(f"leave out {h} + {s}",
                                        lambda m, h=h, s=s: m.folder in (h, s)))  # type: ignore[misc]  # fmt: skip
    seen: set[frozenset[int]] = set()
    for candidate in candidates:  # a split testing the same messages as an earlier one: once
        if candidate is not None:
            tested = frozenset(id(m) for m in candidate.test)
            if tested not in seen:
                seen.add(tested)
                yield candidate


def figures(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> dict[str, float]:
    """AUC, recall at 0.1% and 1% FPR, ham FPR at SPAM_CATCH of spam caught."""
    spam_scores = np.sort(scores[labels == 1])
    cut = spam_scores[int((1 - SPAM_CATCH) * len(spam_scores))]
    return {
        **ranking(labels, scores),
        f"ham_fpr_at_{SPAM_CATCH:.0%}_caught": float(np.mean(scores[labels == 0] >= cut)),
    }


def evaluate_split(
    split: Split,
    symbols: Mapping[str, Sample] | None = None,
    base: Mapping[str, Score] | None = None,
) -> dict[str, dict[str, float]]:
    """Train both models on the split's train part; their figures on its test part.

    With ``symbols`` (the offline checks' and rules' findings of each message), also the
    overall score: weights learned (training.scores) on four fifths of the test part and
    applied to the last, beside the model alone on the same folds.
    """
    y_train = np.array([m.label for m in split.train])
    y_test = np.array([m.label for m in split.test])
    ours = build_pipeline()
    ours.fit([m.features for m in split.train], y_train)
    ours_scores = ours.predict_proba([m.features for m in split.test])[:, 1]
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    baseline = LogisticRegression(C=10, max_iter=3000)
    baseline.fit(vectorizer.fit_transform([m.raw.decode("latin-1") for m in split.train]), y_train)
    base_scores = baseline.decision_function(
        vectorizer.transform([m.raw.decode("latin-1") for m in split.test])
    )
    result = {"Mailmoat model": figures(y_test, ours_scores),
              "baseline TF-IDF + LR": figures(y_test, base_scores)}  # fmt: skip
    if symbols is not None:
        samples = [
            replace(symbols[m.source], log_odds=log_odds(float(p)))
            for m, p in zip(split.test, ours_scores, strict=True)
            if m.source in symbols
        ]
        try:
            rows = scores.figures(samples, base or {}, 10.0, 0.001, 0.5, min_count=5)
        except ConfigError as exc:  # a fold the fit cannot weigh: say so, keep the rest
            result["overall score (learned)"] = {"error": str(exc)}  # type: ignore[dict-item]
        else:
            keys = ("auc", "recall_at_0.1%", "recall_at_1%")
            result["model alone, 5-fold mean"] = {k: rows["model alone"][k] for k in keys}
            result["overall score, learned, 5-fold mean"] = {
                k: rows["overall, learned (out of fold)"][k] for k in keys
            }
    return result


def cross(
    path: Path, limit: int | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Every split of the corpus at ``path``: its sizes and both models' figures.

    With ``settings``, also the overall score (the offline checks and the rules in force,
    weights learned as by ``model scores``) beside the model alone.
    """
    messages = load(path)
    symbols = scores.scan_symbols(path, settings) if settings is not None else None
    base = load_scores(settings.policy.scores_file) if settings is not None else {}
    results = []
    for number, split in enumerate(splits(messages)):
        if limit is not None and number >= limit:
            break
        results.append({"split": split.name, "train": len(split.train), "test": len(split.test),
                        "models": evaluate_split(split, symbols, base)})  # fmt: skip
    return results
