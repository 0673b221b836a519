"""Train a candidate model from a dataset into the registry (not into service: promote does)."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC
from tqdm import tqdm

from gateway.ml.features import FEATURE_VERSION
from gateway.ml.model import MODEL_FILE, build_pipeline, library_versions, sha256_of
from training import dataset as datasets
from training.dataset import content_key
from training.metrics import summary, threshold_for_fpr
from training.registry import write_training_keys

CARD = """# Model {id}

A calibrated linear SVM over TF-IDF words (1-2 grams), structural tokens and character
3-5 grams of the first {chars} characters, from `gateway.ml.features` version {fv}.

- Trained: {created} on {python}, scikit-learn {sklearn}
- Data: {dataset} ({train_ham} ham, {train_spam} spam for training; window {window})
- Threshold: {threshold:.6f}, chosen on out-of-fold predictions of the training data for a
  ham false-positive rate of at most {target_fpr:.3%}
- Out-of-fold (training data): ROC AUC {oof_auc}, spam recall {oof_r01} at 0.1% FPR,
  {oof_r1} at 1% FPR

Intended use: the `classifier` check of the Mailmoat gateway, as one signal among others
(scores add up with authentication, content and rules). It reads only the message itself:
no Received, Date, To or list headers, and no other filter's verdict headers.

Limits: trained on what the dataset holds. A model trained only on the SpamAssassin public
corpus (2002-2005) has not seen today's mail; retrain on your own labelled events.

## Evaluation

{evaluation}
"""


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.5f}" if isinstance(value, float) else str(value)


def train(
    dataset_path: Path, models: Path, c: float, target_fpr: float, label: str = "mailmoat"
) -> str:
    """Fit on the dataset's train split; write the artefact; return its id."""
    stages = tqdm(total=5, desc="train", unit="stage", leave=False, disable=None)
    records = [r for r in datasets.read(dataset_path) if r.split == "train"]
    if len({r.label for r in records}) < 2:
        raise ValueError(f"{dataset_path}: the train split needs both spam and ham")
    features = [r.features for r in records]
    labels = np.array([1 if r.label == "spam" else 0 for r in records])
    stages.update()
    started = time.perf_counter()
    pipeline = build_pipeline(c)
    pipeline.fit(features, labels)
    stages.update()
    # Out-of-fold scores of the training data choose the threshold honestly (the test split
    # stays unseen until evaluate), mapped through the final model's calibration.
    matrix = pipeline.named_steps["features"].transform(features)
    stages.update()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    decisions = cross_val_predict(LinearSVC(C=c, max_iter=20_000), matrix, labels, cv=folds,
                                  method="decision_function")  # fmt: skip
    calibrator = pipeline.named_steps["classifier"].calibrated_classifiers_[0].calibrators[0]
    oof = calibrator.predict(decisions)
    threshold = threshold_for_fpr(oof[labels == 0], target_fpr)
    stages.update()
    seconds = time.perf_counter() - started

    created = datetime.now(UTC)
    model_id = f"{label}-{created:%Y%m%d-%H%M%S}"
    directory = models / model_id
    directory.mkdir(parents=True)
    joblib.dump(pipeline, directory / MODEL_FILE, compress=3)
    write_training_keys(directory, (content_key(r.features) for r in records))
    counts = Counter(r.label for r in records)
    times = [r.time for r in records if r.time > 0]
    window = (
        [datetime.fromtimestamp(t, UTC).date().isoformat() for t in (min(times), max(times))]
        if times
        else None
    )
    metadata = {
        "id": model_id,
        "created": created.timestamp(),
        "sha256": sha256_of(directory / MODEL_FILE),
        "feature_version": FEATURE_VERSION,
        "libraries": library_versions(),
        "params": {"c": c, "target_fpr": target_fpr},
        "threshold": threshold,
        "data": {"dataset": str(dataset_path), "train_counts": dict(counts), "window": window},
        "metrics": {"out_of_fold": summary(labels, oof, threshold)},
        "training_seconds": round(seconds, 1),
    }
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    write_card(
        directory, metadata, "(not evaluated yet: `mailmoat model evaluate " + model_id + "`)"
    )
    stages.update()
    stages.close()
    return model_id


def write_card(directory: Path, metadata: dict[str, Any], evaluation: str) -> None:
    """(Re)write MODEL_CARD.md from the metadata."""
    oof = metadata["metrics"]["out_of_fold"]
    counts = metadata["data"]["train_counts"]
    (directory / "MODEL_CARD.md").write_text(
        CARD.format(
            id=metadata["id"],
            chars=3000,
            fv=metadata["feature_version"],
            created=datetime.fromtimestamp(metadata["created"], UTC).isoformat(timespec="seconds"),
            python=platform.python_version(),
            sklearn=metadata["libraries"]["scikit-learn"],
            dataset=Path(metadata["data"]["dataset"]).name,
            train_ham=counts.get("ham", 0),
            train_spam=counts.get("spam", 0),
            window=metadata["data"]["window"],
            threshold=metadata["threshold"],
            target_fpr=metadata["params"]["target_fpr"],
            oof_auc=_fmt(oof["roc_auc"]),
            oof_r01=_fmt(oof["recall_at_fpr_0.1%"]),
            oof_r1=_fmt(oof["recall_at_fpr_1%"]),
            evaluation=evaluation,
        )
    )
