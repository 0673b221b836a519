"""Metrics at low false-positive rates, where a mail filter lives."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def recall_at_fpr(
    labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], fpr_limit: float
) -> float:
    """The largest spam recall reachable with a ham false-positive rate <= fpr_limit."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= fpr_limit].max())


def ranking(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> dict[str, float]:
    """How well ``scores`` rank spam above ham: ROC AUC, recall at 0.1% and 1% FPR."""
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "recall_at_0.1%": recall_at_fpr(labels, scores, 0.001),
        "recall_at_1%": recall_at_fpr(labels, scores, 0.01),
    }


def threshold_for_fpr(ham_scores: np.ndarray[Any, Any], target_fpr: float) -> float:
    """The lowest threshold whose ham false-positive rate stays within the target."""
    ordered = np.sort(ham_scores)[::-1]
    allowed = int(np.floor(target_fpr * len(ordered)))
    # Above the (allowed+1)-th highest ham score: at most `allowed` ham reach the threshold.
    bound = ordered[allowed] if allowed < len(ordered) else 0.0
    return float(min(0.999999, np.nextafter(bound, 1.0)))


def summary(
    labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], threshold: float
) -> dict[str, Any]:
    """AUC, recall at 0.1% and 1% FPR, and the confusion at the threshold."""
    spam = labels == 1
    predicted = scores >= threshold
    tp = int(np.sum(predicted & spam))
    fp = int(np.sum(predicted & ~spam))
    fn = int(np.sum(~predicted & spam))
    tn = int(np.sum(~predicted & ~spam))
    return {
        "n_ham": int(np.sum(~spam)),
        "n_spam": int(np.sum(spam)),
        "roc_auc": float(roc_auc_score(labels, scores)) if 0 < spam.sum() < len(spam) else None,
        "recall_at_fpr_0.1%": recall_at_fpr(labels, scores, 0.001),
        "recall_at_fpr_1%": recall_at_fpr(labels, scores, 0.01),
        "threshold": threshold,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "fpr": fp / max(1, fp + tn),
        "fnr": fn / max(1, fn + tp),
    }
