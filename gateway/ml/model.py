"""The spam model: the scikit-learn pipeline (shared with training/) and verified loading.

A model artefact is a directory ``models/<id>/`` holding ``model.joblib``, ``metadata.json``
and ``MODEL_CARD.md``. joblib files are pickles, i.e. code: an artefact is loaded only when
the sha256 of ``model.joblib`` matches its metadata, and its feature version and library
versions match what is running; anything else is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from gateway.errors import ConfigError
from gateway.ml.features import FEATURE_VERSION, Features

CHAR_TEXT = 3000  # characters given to the character n-grams (they cost the most)
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"

log = logging.getLogger(__name__)


def text_of(batch: Sequence[Features]) -> list[str]:
    """Subject and body text of each message."""
    return [f.text for f in batch]


def head_text_of(batch: Sequence[Features]) -> list[str]:
    """The start of the text, for character n-grams (obfuscated words, other scripts)."""
    return [f.text[:CHAR_TEXT] for f in batch]


def tokens_of(batch: Sequence[Features]) -> list[str]:
    """Structural tokens (headers present, types, URL domains...) as one string each."""
    return [" ".join(f.tokens) for f in batch]


def build_pipeline(c: float = 1.0) -> Pipeline:
    """TF-IDF words, structure tokens and character n-grams into a calibrated linear SVM.

    Chosen by measurement on the SpamAssassin corpus (docs/model.md): a linear SVM ranked
    ham and spam better at low false-positive rates than logistic regression or naive
    Bayes on the same features; sigmoid calibration (on held-out folds, without averaging
    the folds' models) turns its margin into a probability without changing the ranking.
    """
    features = FeatureUnion(
        [
            ("words", make_pipeline(
                FunctionTransformer(text_of),
                TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), dtype=np.float32),
            )),
            ("tokens", make_pipeline(
                FunctionTransformer(tokens_of),
                TfidfVectorizer(sublinear_tf=True, token_pattern=r"\S+", lowercase=False,  # noqa: S106
                                dtype=np.float32),
            )),
            ("chars", make_pipeline(
                FunctionTransformer(head_text_of),
                TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5),
                                min_df=3, max_features=300_000, dtype=np.float32),
            )),
        ]
    )  # fmt: skip
    classifier = CalibratedClassifierCV(
        LinearSVC(C=c, max_iter=20_000), method="sigmoid", cv=5, ensemble=False
    )
    return Pipeline([("features", features), ("classifier", classifier)])


def library_versions() -> dict[str, str]:
    """Versions recorded in metadata and checked at load."""
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "joblib": joblib.__version__,
    }


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


Terms = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


def _char_wb_terms(vectorizer: Any) -> Callable[[str], Terms]:
    """(vocabulary indices, counts) equal to the vectorizer's for analyzer='char_wb'.

    char_wb n-grams never cross a word boundary, so each distinct word of a message is
    looked at once, its in-vocabulary n-gram indices are cached (words repeat across mail),
    and the counting is numpy work over the distinct words instead of a Python loop over
    thousands of n-grams.
    """
    preprocess = vectorizer.build_preprocessor()
    low, high = vectorizer.ngram_range
    lookup = vectorizer.vocabulary_.get

    @lru_cache(maxsize=20_000)
    def word_indices(word: str) -> np.ndarray[Any, Any]:
        padded = f" {word} "
        size = len(padded)
        # As scikit-learn: every n-gram of the padded word; one shorter than n once, whole.
        grams = [padded[i : i + n] for n in range(low, high + 1) for i in range(size - n + 1)]
        if size < low:
            grams = [padded]
        found = [index for index in map(lookup, grams) if index is not None]
        return np.array(found, dtype=np.int64)

    def terms(document: str) -> Terms:
        words = Counter(preprocess(document).split())
        arrays = list(map(word_indices, words))
        lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
        if not lengths.any():
            return np.empty(0, np.int64), np.empty(0, np.float64)
        repeats = np.repeat(np.fromiter(words.values(), np.float64, len(words)), lengths)
        unique, where = np.unique(np.concatenate(arrays), return_inverse=True)
        return unique, np.bincount(where, weights=repeats)

    return terms


_DEFAULT_TOKENS = r"(?u)\b\w\w+\b"  # scikit-learn's token_pattern


def _word_terms(vectorizer: Any) -> Callable[[str], Terms]:
    """(vocabulary indices, counts) equal to the vectorizer's for analyzer='word'.

    scikit-learn joins each n-gram in a Python loop; here ``map`` and ``zip`` build them
    and ``Counter`` counts them in C (or, for words and pairs, numpy does: _pair_terms).
    Stop words are not supported (the model has none).
    """
    if vectorizer.stop_words is not None:
        return _analyzer_terms(vectorizer)
    preprocess = vectorizer.build_preprocessor()
    tokenize = vectorizer.build_tokenizer()
    if vectorizer.token_pattern == _DEFAULT_TOKENS:
        # The same tokens a third faster: findall never starts inside a run of word
        # characters, and a greedy run ends at a boundary, so the \b are implied.
        tokenize = re.compile(r"\w\w+").findall
    low, high = vectorizer.ngram_range
    lookup = vectorizer.vocabulary_.get
    if (low, high) == (1, 2):
        pairs = _pair_terms(vectorizer.vocabulary_, preprocess, tokenize)
        if pairs is not None:
            return pairs

    def terms(document: str) -> Terms:
        tokens = tokenize(preprocess(document))
        grams: list[Iterable[str]] = [tokens] if low == 1 else []
        for n in range(max(low, 2), high + 1):
            shifted = [islice(tokens, k, None) for k in range(n)]
            grams.append(map(" ".join, zip(*shifted, strict=False)))  # stops at the shortest
        return _indexed(Counter(chain.from_iterable(grams)), lookup)

    return terms


def _pair_terms(
    vocabulary: dict[str, int],
    preprocess: Callable[[str], str],
    tokenize: Callable[[str], list[str]],
) -> Callable[[str], Terms] | None:
    """Words and word pairs counted without building the pairs' strings.

    A pair is in the vocabulary only if both its words are (a pair is never in more
    documents than its words), so each pair of known words is one number, first * size +
    second, found by binary search in the vocabulary's pairs, sorted the same way. None
    when the vocabulary breaks that rule (max_features could), to count the other way.
    """
    size = len(vocabulary)
    keys: list[int] = []
    indices: list[int] = []
    for term, index in vocabulary.items():
        first, space, second = term.partition(" ")
        if space:
            if first not in vocabulary or second not in vocabulary:
                return None
            keys.append(vocabulary[first] * size + vocabulary[second])
            indices.append(index)
    order = np.argsort(np.asarray(keys, np.int64))
    pair_keys = np.asarray(keys, np.int64)[order]
    pair_indices = np.asarray(indices, np.int64)[order]
    if not pair_keys.size:
        return None
    lookup = vocabulary.get

    def terms(document: str) -> Terms:
        tokens = tokenize(preprocess(document))
        words = np.fromiter(map(lookup, tokens, repeat(-1)), np.int64, len(tokens))
        known = words >= 0
        pairs = (words[:-1] * size + words[1:])[known[:-1] & known[1:]]
        where = np.searchsorted(pair_keys, pairs)
        where[where == pair_keys.size] = 0  # past the end: not a pair (checked next)
        found = pair_indices[where[pair_keys[where] == pairs]]
        unique, counts = np.unique(np.concatenate([words[known], found]), return_counts=True)
        return unique, counts.astype(np.float64)

    return terms


def _indexed(counts: Counter[str], lookup: Callable[[str, int], int]) -> Terms:
    """Vocabulary indices and counts of the counted terms the vocabulary knows."""
    # map() and fromiter keep the per-term loop in C: unknown terms get -1.
    index = np.fromiter(map(lookup, counts.keys(), repeat(-1)), np.int64, len(counts))
    tf = np.fromiter(counts.values(), np.float64, len(counts))
    known = index >= 0
    return index[known], tf[known]


def _analyzer_terms(vectorizer: Any) -> Callable[[str], Terms]:
    """(vocabulary indices, counts) through the vectorizer's own analyzer."""
    analyzer = vectorizer.build_analyzer()
    lookup = vectorizer.vocabulary_.get

    def terms(document: str) -> Terms:
        return _indexed(Counter(analyzer(document)), lookup)

    return terms


def _terms_of(vectorizer: Any) -> Callable[[str], Terms]:
    """The fastest exact way to count a vectorizer's terms in one document."""
    if vectorizer.analyzer == "char_wb":
        return _char_wb_terms(vectorizer)
    if vectorizer.analyzer == "word" and vectorizer.tokenizer is None:
        return _word_terms(vectorizer)
    return _analyzer_terms(vectorizer)


@dataclass(frozen=True, slots=True)
class _Block:
    """One TF-IDF vectorizer of the union, reduced to what scoring one message needs."""

    select: Callable[[Sequence[Features]], list[str]]
    terms: Callable[[str], Terms]
    idf: np.ndarray[Any, Any]
    coef: np.ndarray[Any, Any]
    sublinear: bool


class LinearScorer:
    """The fitted pipeline's arithmetic for one message, without scikit-learn's per-call cost.

    scikit-learn spends most of a single prediction validating inputs and building sparse
    matrices (3.3 ms median here). The model is linear, so the same number is a sum of
    tf-idf weights times coefficients, per vectorizer L2-normalised, through the sigmoid
    calibration; tests check it equals ``pipeline.predict_proba`` to 1e-6.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        calibrated = pipeline.named_steps["classifier"].calibrated_classifiers_[0]
        svm = calibrated.estimator
        sigmoid = calibrated.calibrators[0]
        coef = np.asarray(svm.coef_, dtype=np.float64).ravel()
        self.intercept = float(np.asarray(svm.intercept_).ravel()[0])
        self.a = float(sigmoid.a_)
        self.b = float(sigmoid.b_)
        self.blocks: list[_Block] = []
        offset = 0
        for _, block in pipeline.named_steps["features"].transformer_list:
            selector, vectorizer = (step for _, step in block.steps)
            if vectorizer.norm != "l2" or not vectorizer.use_idf:
                raise ConfigError("LinearScorer needs l2-normalised tf-idf vectorizers")
            size = len(vectorizer.vocabulary_)
            self.blocks.append(
                _Block(
                    select=selector.func,
                    terms=_terms_of(vectorizer),
                    idf=np.asarray(vectorizer.idf_, dtype=np.float64),
                    coef=coef[offset : offset + size],
                    sublinear=bool(vectorizer.sublinear_tf),
                )
            )
            offset += size
        if offset != coef.size:
            raise ConfigError("model coefficients do not match its vocabularies")

    def decision(self, features: Features) -> float:
        """The SVM margin of one message."""
        total = self.intercept
        for block in self.blocks:
            index, tf = block.terms(block.select([features])[0])
            if not index.size:
                continue
            values = (1.0 + np.log(tf) if block.sublinear else tf) * block.idf[index]
            total += float(values @ block.coef[index]) / math.sqrt(float(values @ values))
        return total

    def probability(self, features: Features) -> float:
        """The calibrated spam probability (scikit-learn's sigmoid calibration)."""
        return float(1.0 / (1.0 + math.exp(self.a * self.decision(features) + self.b)))


@dataclass(frozen=True)
class SpamModel:
    """A verified, loaded model and its metadata."""

    id: str
    pipeline: Pipeline
    metadata: dict[str, Any]
    scorer: LinearScorer

    @property
    def threshold(self) -> float:
        """The probability at or above which a message is called spam."""
        return float(self.metadata["threshold"])

    def probability(self, features: Features) -> float:
        """Calibrated spam probability of one message (fast path, same number)."""
        return self.scorer.probability(features)

    def probabilities(self, batch: Sequence[Features]) -> np.ndarray[Any, Any]:
        """Spam probabilities of many messages."""
        result: np.ndarray[Any, Any] = self.pipeline.predict_proba(list(batch))[:, 1]
        return result


def read_metadata(directory: Path) -> dict[str, Any]:
    """metadata.json of an artefact directory (ConfigError when missing or not JSON)."""
    try:
        data: dict[str, Any] = json.loads((directory / METADATA_FILE).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{directory}: no {METADATA_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory / METADATA_FILE}: unreadable: {exc}") from exc
    return data


# Verified models by (directory, sha256): a reload or a second pipeline reuses the loaded
# object instead of unpickling 80 MB again; a changed file has another sha256.
_LOADED: dict[tuple[str, str], SpamModel] = {}


def load_model(directory: Path) -> SpamModel:
    """Load an artefact after checking its sha256, feature version and library versions."""
    metadata = read_metadata(directory)
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ConfigError(f"{directory}: no {MODEL_FILE}")
    expected = metadata.get("sha256")
    actual = sha256_of(model_path)
    cached = _LOADED.get((str(directory.resolve()), actual))
    if cached is not None and cached.metadata == metadata:
        return cached
    if actual != expected:
        raise ConfigError(
            f"{model_path}: sha256 {actual[:16]}... does not match the metadata's "
            f"{str(expected)[:16]}...: refusing to load a file that is not the one registered"
        )
    if metadata.get("feature_version") != FEATURE_VERSION:
        raise ConfigError(
            f"{directory}: trained on feature version {metadata.get('feature_version')}, "
            f"this gateway computes version {FEATURE_VERSION}: retrain the model"
        )
    trained = metadata.get("libraries", {}).get("scikit-learn", "?")
    if _minor(trained) != _minor(sklearn.__version__):
        raise ConfigError(
            f"{directory}: trained with scikit-learn {trained}, running {sklearn.__version__}: "
            "retrain the model (pickles do not cross minor versions safely)"
        )
    try:
        pipeline = joblib.load(model_path)
    except Exception as exc:  # a verified file that still fails to load is corrupt
        raise ConfigError(f"{model_path}: cannot load: {exc}") from exc
    if not isinstance(pipeline, Pipeline) or "threshold" not in metadata:
        raise ConfigError(f"{directory}: not a Mailmoat model artefact")
    model = SpamModel(
        str(metadata.get("id", directory.name)), pipeline, metadata, LinearScorer(pipeline)
    )
    _LOADED.clear()  # keep one model in memory, not every one ever loaded
    _LOADED[(str(directory.resolve()), actual)] = model
    return model


def seeded_registry(models: Path, shipped: Path) -> Path:
    """``models``, holding at least the shipped models and CURRENT on first use.

    The registry is state: promote and rollback change it, so it lives in a state directory
    (``var/models`` in a checkout, /var/lib/mailmoat/models when installed), never in the
    source tree or the installed package; this fills a new one from the shipped models.
    """
    if models.resolve() == shipped.resolve() or not (shipped / CURRENT_FILE).exists():
        return models
    if (models / CURRENT_FILE).exists():
        _replace_outdated(models, shipped)
        return models
    models.mkdir(parents=True, exist_ok=True)
    for artefact in shipped.iterdir():
        if artefact.is_dir():
            _copy_artefact(artefact, models)
    tmp_current = models / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    shutil.copyfile(shipped / CURRENT_FILE, tmp_current)
    if (models / CURRENT_FILE).exists():
        tmp_current.unlink()
    else:
        os.replace(tmp_current, models / CURRENT_FILE)
    return models


def _copy_artefact(artefact: Path, models: Path) -> None:
    """Copy a shipped artefact into the registry unless it is there already.

    Copied under a name of this process's, then renamed: two processes starting at once
    (two workers, a gateway and a training command) both end with a whole artefact.
    """
    target = models / artefact.name
    if target.exists():
        return
    tmp = models / f".{artefact.name}.{os.getpid()}.tmp"
    shutil.copytree(artefact, tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process was first
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_outdated(models: Path, shipped: Path) -> None:
    """After an upgrade that changed the features: the shipped model replaces an outdated one.

    A model trained on another feature version cannot serve this code (load_model refuses
    it), so the gateway would start without a classifier. The shipped model of this version
    is put in service instead, loudly; the site's own model needs retraining on its labels.
    """
    try:
        current = current_model_dir(models)
        version = read_metadata(current).get("feature_version")
    except (ConfigError, OSError):
        return
    shipped_id = (shipped / CURRENT_FILE).read_text().strip()
    if version == FEATURE_VERSION or not shipped_id:
        return
    if read_metadata(shipped / shipped_id).get("feature_version") != FEATURE_VERSION:
        return
    _copy_artefact(shipped / shipped_id, models)
    tmp_current = models / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    tmp_current.write_text(f"{shipped_id}\n")
    os.replace(tmp_current, models / CURRENT_FILE)
    log.warning(
        "model %s was trained on feature version %s, this version computes %s: the shipped "
        "model %s is in service now; retrain yours on your labels (mailmoat model dataset "
        "--events, train, evaluate, promote)",
        current.name,
        version,
        FEATURE_VERSION,
        shipped_id,
    )


def current_model_dir(models: Path) -> Path:
    """The artefact named by models/CURRENT."""
    try:
        model_id = (models / CURRENT_FILE).read_text().strip()
    except FileNotFoundError as exc:
        raise ConfigError(f"{models}: no {CURRENT_FILE} file naming the model in service") from exc
    if not model_id or "/" in model_id or model_id.startswith("."):
        raise ConfigError(f"{models / CURRENT_FILE}: invalid model id {model_id!r}")
    return models / model_id
