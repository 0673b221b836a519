"""How well the model generalises beyond the fixed split, against the plain raw-text baseline.

Run:  .venv/bin/python -m bench.generalisation

Three tests, each training a fresh Mailmoat model and the plain baseline (TF-IDF over the
raw message text + logistic regression, which the issue measured at AUC 0.9999) on the same
training data:

1. fixed split: the SpamAssassin md5 split (as the shipped model);
2. shift: train on easy-ham-1 + spam-1, test on easy-ham-2 + hard-ham-1 + spam-2 (other
   months, other lists, other spam runs: mail that looks different);
3. headers stripped: the fixed split's test messages reduced to From, Subject and the MIME
   headers, as mail from another source arrives without this corpus's collection headers.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from bench.common import load_corpus, table
from gateway.message import ParsedMessage, iter_header_fields, split_header_block
from gateway.ml.features import extract
from gateway.ml.model import build_pipeline
from training.metrics import recall_at_fpr

KEEP = re.compile(rb"^(from|subject|mime-version|content-.*)$", re.IGNORECASE)


def strip_headers(raw: bytes) -> bytes:
    block, body = split_header_block(raw)
    kept = [
        text for name, text in iter_header_fields(block) if name is not None and KEEP.match(name)
    ]
    return b"".join(kept) + body


def score_pair(train: list[tuple[bytes, int]], test: list[tuple[bytes, int]]) -> list[list[object]]:
    y_train = np.array([y for _, y in train])
    y_test = np.array([y for _, y in test])
    ours = build_pipeline()
    ours.fit([extract(ParsedMessage.parse(r)) for r, _ in train], y_train)
    ours_scores = ours.predict_proba([extract(ParsedMessage.parse(r)) for r, _ in test])[:, 1]
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    baseline = LogisticRegression(C=10, max_iter=3000)
    baseline.fit(vectorizer.fit_transform([r.decode("latin-1") for r, _ in train]), y_train)
    base_scores = baseline.decision_function(
        vectorizer.transform([r.decode("latin-1") for r, _ in test])
    )
    from sklearn.metrics import roc_auc_score

    rows = []
    for name, scores in (("Mailmoat model", ours_scores), ("raw-text TF-IDF + LR", base_scores)):
        auc = roc_auc_score(y_test, scores)
        low, one = recall_at_fpr(y_test, scores, 0.001), recall_at_fpr(y_test, scores, 0.01)
        rows.append([name, f"{auc:.5f}", f"{low:.4f}", f"{one:.4f}"])
    return rows


def main() -> None:
    corpus = [(path, raw, 1 if path.startswith("spam") else 0) for path, raw in load_corpus()]

    def is_test(path: str) -> bool:
        return int(hashlib.md5(path.encode()).hexdigest(), 16) % 5 == 0  # noqa: S324

    fixed_train = [(r, y) for p, r, y in corpus if not is_test(p)]
    fixed_test = [(r, y) for p, r, y in corpus if is_test(p)]
    early = [(r, y) for p, r, y in corpus if p.split("/")[0] in ("easy-ham-1", "spam-1")]
    late = [
        (r, y) for p, r, y in corpus if p.split("/")[0] in ("easy-ham-2", "hard-ham-1", "spam-2")
    ]
    stripped = [(strip_headers(r), y) for r, y in fixed_test]
    headers = ["test", "model", "ROC AUC", "recall @0.1% FPR", "recall @1% FPR"]
    rows = []
    tests = [
        ("fixed split", fixed_train, fixed_test),
        ("shift: -1 folders -> -2 and hard ham", early, late),
        ("fixed split, headers stripped", fixed_train, stripped),
    ]
    for name, train, test in tests:
        for row in score_pair(train, test):
            rows.append([name, *row])
        print(f"done: {name} ({len(train)} train, {len(test)} test)", flush=True)
    print(table(headers, rows))


if __name__ == "__main__":
    main()
