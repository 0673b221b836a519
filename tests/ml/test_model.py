"""Model artefacts: the shipped one loads, its fast path equals scikit-learn, bad ones fail."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gateway.config import PROJECT_ROOT
from gateway.errors import ConfigError
from gateway.message import ParsedMessage
from gateway.ml import model as model_module
from gateway.ml.features import FEATURE_VERSION, extract
from gateway.ml.model import current_model_dir, load_model, sha256_of
from tests.checks.golden import MESSAGES
from tests.messages import plain, with_attachments

MODELS = PROJECT_ROOT / "models"


@pytest.fixture(scope="module")
def shipped():
    return load_model(current_model_dir(MODELS))


@pytest.fixture
def artefact(tmp_path, shipped):
    copy = tmp_path / "models" / shipped.id
    shutil.copytree(MODELS / shipped.id, copy)
    (tmp_path / "models" / "CURRENT").write_text(shipped.id + "\n")
    model_module._LOADED.clear()
    yield copy
    model_module._LOADED.clear()


def test_shipped_model_metadata(shipped):
    meta = shipped.metadata
    assert meta["sha256"] == sha256_of(MODELS / shipped.id / "model.joblib")
    assert meta["feature_version"] == FEATURE_VERSION
    assert 0 < shipped.threshold < 1
    assert {"python", "scikit-learn", "numpy", "scipy", "joblib"} <= set(meta["libraries"])
    assert meta["data"]["train_counts"]["spam"] > 1000
    assert (MODELS / shipped.id / "MODEL_CARD.md").read_text().startswith("# Model ")


def test_fast_path_equals_scikit_learn(shipped):
    raws = [p.read_bytes() for p in sorted(MESSAGES.glob("*.eml"))]
    raws += [
        plain("Win a free cruise now!!! Click here"),
        with_attachments(("a.zip", b"PK", "application/zip")),
    ]
    batch = [extract(ParsedMessage.parse(r)) for r in raws]
    expected = shipped.pipeline.predict_proba(batch)[:, 1]
    fast = np.array([shipped.probability(f) for f in batch])
    assert np.allclose(fast, expected, atol=1e-9)


def test_tampered_file_is_refused(artefact):
    data = bytearray((artefact / "model.joblib").read_bytes())
    data[-10] ^= 0xFF
    (artefact / "model.joblib").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match"):
        load_model(artefact)


def test_corrupt_file_with_matching_hash_is_refused(artefact):
    (artefact / "model.joblib").write_bytes(b"not a pickle at all")
    meta = json.loads((artefact / "metadata.json").read_text())
    meta["sha256"] = sha256_of(artefact / "model.joblib")
    (artefact / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="cannot load"):
        load_model(artefact)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("feature_version", 99, "feature version 99"),
        ("libraries", {"scikit-learn": "0.24.2"}, "scikit-learn 0.24.2"),
    ],
)
def test_incompatible_metadata_is_refused(artefact, key, value, message):
    meta = json.loads((artefact / "metadata.json").read_text())
    meta[key] = value
    (artefact / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=message):
        load_model(artefact)


def test_registry_errors(tmp_path):
    with pytest.raises(ConfigError, match="no CURRENT"):
        current_model_dir(tmp_path)
    (tmp_path / "CURRENT").write_text("../etc\n")
    with pytest.raises(ConfigError, match="invalid model id"):
        current_model_dir(tmp_path)
    (tmp_path / "CURRENT").write_text("absent\n")
    with pytest.raises(ConfigError, match=r"no metadata\.json"):
        load_model(current_model_dir(tmp_path))


@pytest.mark.parametrize(
    "options",
    [
        {"analyzer": "char_wb", "ngram_range": (3, 5)},
        {"analyzer": "char_wb", "ngram_range": (5, 6)},  # words shorter than n count once
        {"analyzer": "word", "ngram_range": (1, 2)},
        {"analyzer": "word", "ngram_range": (2, 3)},
        {"analyzer": "word", "ngram_range": (1, 2), "max_features": 12},  # pairs of unknowns
    ],
)
def test_term_counts_equal_scikit_learns(options):
    from collections import Counter

    from sklearn.feature_extraction.text import TfidfVectorizer

    from gateway.ml.model import _terms_of

    documents = [
        "Win a FREE cruise now now now!!! Click here: http://spam.example/x?y=1",
        "a b c dé ümlaut\tTabs\n\nand  spaces, Ü x yy zzz",
        "Numbers for the quarterly report are attached below, as agreed. " * 5,
        "",
        "one",
    ]
    vectorizer = TfidfVectorizer(**options).fit(documents[:3])
    analyzer = vectorizer.build_analyzer()
    terms = _terms_of(vectorizer)
    for document in documents:
        expected = {
            vectorizer.vocabulary_[term]: count
            for term, count in Counter(analyzer(document)).items()
            if term in vectorizer.vocabulary_
        }
        index, counts = terms(document)
        assert dict(zip(index.tolist(), counts.tolist(), strict=True)) == expected, document


def test_pairs_are_counted_by_number_only_when_their_words_are_known():
    from gateway.ml.model import _pair_terms

    assert _pair_terms({"a b": 0}, str.lower, str.split) is None  # "a" and "b" unknown
    terms = _pair_terms({"a": 0, "b": 1, "a b": 2}, str.lower, str.split)
    assert terms is not None
    index, counts = terms("A b a B c a")
    assert dict(zip(index.tolist(), counts.tolist(), strict=True)) == {0: 3, 1: 2, 2: 2}


def test_the_registry_is_state_seeded_from_the_shipped_models(tmp_path):
    """promote and rollback change a state directory, never the shipped models."""
    from gateway.ml.model import CURRENT_FILE, seeded_registry

    shipped_current = (MODELS / CURRENT_FILE).read_text()
    registry = seeded_registry(tmp_path / "var" / "models", MODELS)
    assert (registry / CURRENT_FILE).read_text() == shipped_current
    model_id = shipped_current.strip()
    assert (registry / model_id / "model.joblib").stat().st_size == (
        MODELS / model_id / "model.joblib"
    ).stat().st_size
    # What the site promotes stays: seeding again does not overwrite it.
    (registry / CURRENT_FILE).write_text("site-model\n")
    seeded_registry(registry, MODELS)
    assert (registry / CURRENT_FILE).read_text() == "site-model\n"
    assert (MODELS / CURRENT_FILE).read_text() == shipped_current


def test_an_upgrade_that_changed_the_features_puts_the_shipped_model_in_service(tmp_path, caplog):
    """A site model of an older feature version cannot load: the shipped one replaces it."""
    from gateway.ml.model import CURRENT_FILE, seeded_registry

    shipped_id = (MODELS / CURRENT_FILE).read_text().strip()
    registry = tmp_path / "models"
    old = registry / "site-20250101"
    shutil.copytree(MODELS / shipped_id, old)
    metadata = json.loads((old / "metadata.json").read_text())
    (old / "metadata.json").write_text(json.dumps({**metadata, "feature_version": 1}))
    (registry / CURRENT_FILE).write_text("site-20250101\n")
    with pytest.raises(ConfigError, match="feature version 1"):
        load_model(old)
    with caplog.at_level("WARNING"):
        seeded_registry(registry, MODELS)
    assert (registry / CURRENT_FILE).read_text().strip() == shipped_id
    assert "retrain yours" in caplog.text
    assert load_model(current_model_dir(registry)).id == shipped_id
    assert old.is_dir()  # the site's model is kept (for its record), not deleted
