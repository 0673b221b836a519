"""Evaluate a candidate against the model in service on the same held-out data; HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.ml.features import FEATURE_VERSION
from gateway.ml.model import load_model, read_metadata
from training import dataset as datasets
from training.metrics import recall_at_fpr, summary, threshold_for_fpr
from training.registry import EVALUATION_FILE, current_id, training_keys
from training.train import write_card


def _plots(results: dict[str, dict[str, Any]], labels: np.ndarray[Any, Any]) -> dict[str, str]:
    """PNG plots (base64) of ROC, precision-recall, score histograms and calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    images: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        images[name] = base64.b64encode(buffer.getvalue()).decode()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        fpr, tpr, _ = roc_curve(labels, r["scores"])
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {r['metrics']['roc_auc']:.5f})")
    ax.set_xscale("log")
    ax.axvline(0.001, ls=":", c="grey")
    ax.axvline(0.01, ls=":", c="grey")
    ax.set(xlabel="ham false-positive rate (log; 1e-4 = none)", ylabel="spam recall", title="ROC")
    ax.legend(loc="lower right")
    save(fig, "roc")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        precision, recall, _ = precision_recall_curve(labels, r["scores"])
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0.9, 1.001))
    ax.legend(loc="lower left")
    save(fig, "pr")

    for name, r in results.items():
        fig, ax = plt.subplots(figsize=(6, 3))
        bins = [i / 50 for i in range(51)]
        ax.hist(r["scores"][labels == 0], bins=bins, alpha=0.6, label="ham", log=True)
        ax.hist(r["scores"][labels == 1], bins=bins, alpha=0.6, label="spam", log=True)
        ax.axvline(r["metrics"]["threshold"], c="k", ls="--", label="threshold")
        ax.set(xlabel="spam probability", ylabel="messages (log)", title=f"Scores: {name}")
        ax.legend()
        save(fig, f"hist_{name}")

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", c="grey")
    for name, r in results.items():
        observed, predicted = calibration_curve(labels, r["scores"], n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, "o-", label=name)
    ax.set(xlabel="predicted probability", ylabel="observed spam fraction", title="Calibration")
    ax.legend()
    save(fig, "calibration")
    return images


def _html(
    title: str, results: dict[str, dict[str, Any]], images: dict[str, str], meta: dict[str, Any]
) -> str:
    rows = []
    for name, r in results.items():
        m = r["metrics"]
        c = m["confusion"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{m['roc_auc']:.5f}</td>"
            f"<td>{m['recall_at_fpr_0.1%']:.4f}</td><td>{m['recall_at_fpr_1%']:.4f}</td>"
            f"<td>{m['threshold']:.6f}</td><td>{m['fpr']:.4%}</td><td>{m['fnr']:.4%}</td>"
            f"<td>TP {c['tp']} / FP {c['fp']} / FN {c['fn']} / TN {c['tn']}</td></tr>"
        )
    pictures = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{v}">'
        f"<figcaption>{k}</figcaption></figure>"
        for k, v in images.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:1em}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Dataset: {html.escape(str(meta["dataset"]))};
test split: {meta["n_ham"]} ham, {meta["n_spam"]} spam;
target false-positive rate {meta["target_fpr"]:.3%}.</p>
<table><tr><th>model</th><th>ROC AUC</th><th>recall @0.1% FPR</th><th>recall @1% FPR</th>
<th>threshold</th><th>FPR</th><th>FNR</th><th>confusion at threshold</th></tr>
{"".join(rows)}</table>
<p>{html.escape(meta["verdict"])}</p>{pictures}</body></html>"""


def without_training_data(
    records: list[datasets.Record], model_dirs: dict[str, Path]
) -> tuple[list[datasets.Record], dict[str, Any]]:
    """The test records none of the models was trained on, and what was left out.

    A test message a model was trained on flatters it (the shipped model scores 1.0 on its
    own training mail): such messages are left out for every model alike, so the comparison
    stays on the same messages. A model trained before training keys were kept is named.
    """
    trained: set[str] = set()
    unknown = []
    for model_id, directory in model_dirs.items():
        keys = training_keys(directory)
        if keys is None:
            unknown.append(model_id)
        else:
            trained |= keys
    kept = [r for r in records if datasets.content_key(r.features) not in trained]
    return kept, {"excluded": len(records) - len(kept), "unknown_for": unknown}


def evaluate(
    candidate: str,
    models: Path,
    dataset_path: Path,
    against: str | None,
    reports: Path,
    target_fpr: float,
) -> dict[str, Any]:
    """Score the test split with the candidate (and the model to compare); write the report."""
    records = [r for r in datasets.read(dataset_path) if r.split == "test"]
    names = {"candidate": candidate}
    other = current_id(models) if against == "current" else against
    if other and other != candidate:
        names["current" if against == "current" else "other"] = other
    outdated = ""
    compared = names.get("current") or names.get("other")
    if compared and read_metadata(models / compared).get("feature_version") != FEATURE_VERSION:
        # A model of an older feature version cannot read this dataset, nor serve beside the
        # code that made it: there is nothing to compare the candidate with.
        outdated = (f"{compared} was trained on feature version "
                    f"{read_metadata(models / compared).get('feature_version')}; this code "
                    f"computes {FEATURE_VERSION}: nothing to compare with")  # fmt: skip
        names = {"candidate": candidate}
    records, overlap = without_training_data(records, {n: models / n for n in names.values()})
    if len({r.label for r in records}) < 2:
        raise ValueError(
            f"{dataset_path}: the test split needs both spam and ham"
            + (" once the messages the models were trained on are left out: build the dataset"
               " from other mail, or with the split the model was trained with"
               if overlap["excluded"] else "")
        )  # fmt: skip
    features = [r.features for r in records]
    labels = np.array([1 if r.label == "spam" else 0 for r in records])
    results: dict[str, dict[str, Any]] = {}
    for role, model_id in names.items():
        model = load_model(models / model_id)
        started = time.perf_counter()
        scores = model.probabilities(features)
        per_message_ms = (time.perf_counter() - started) * 1000 / len(records)
        metrics = summary(labels, scores, model.threshold)
        metrics["id"] = model_id
        metrics["threshold_for_target_on_this_data"] = threshold_for_fpr(
            scores[labels == 0], target_fpr
        )
        metrics["batch_ms_per_message"] = round(per_message_ms, 3)
        results[role] = {"scores": scores, "metrics": metrics}
    verdict = outdated or "no model to compare with"
    better = True
    if len(results) > 1:
        ((_, ref),) = [(k, v) for k, v in results.items() if k != "candidate"]
        ref_metrics = ref["metrics"]
        ours = recall_at_fpr(labels, results["candidate"]["scores"], target_fpr)
        theirs = recall_at_fpr(labels, ref["scores"], target_fpr)
        better = ours >= theirs
        verdict = (
            f"At {target_fpr:.3%} FPR the candidate catches {ours:.4f} of spam, "
            f"{ref_metrics['id']} catches {theirs:.4f}: candidate is "
            f"{'at least as good' if better else 'worse'}."
        )
    meta = {
        "dataset": str(dataset_path),
        "n_ham": int((labels == 0).sum()),
        "n_spam": int((labels == 1).sum()),
        "target_fpr": target_fpr,
        "verdict": verdict,
        "training_overlap": overlap,
    }
    reports.mkdir(parents=True, exist_ok=True)
    report_path = reports / f"evaluation-{candidate}.html"
    report_path.write_text(
        _html(f"Evaluation of {candidate}", results, _plots(results, labels), meta)
    )
    evaluation = {
        **meta,
        "time": time.time(),
        "against": compared if outdated else names.get("current") or names.get("other"),
        "better_than_against": better,
        "models": {role: r["metrics"] for role, r in results.items()},
        "report": str(report_path),
    }
    (models / candidate / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    metadata = json.loads((models / candidate / "metadata.json").read_text())
    write_card(models / candidate, metadata, _card_section(evaluation))
    return evaluation


def _card_section(evaluation: dict[str, Any]) -> str:
    m = evaluation["models"]["candidate"]
    c = m["confusion"]
    return (
        f"On {Path(evaluation['dataset']).name} (test split: {evaluation['n_ham']} ham, "
        f"{evaluation['n_spam']} spam):\n\n"
        f"| ROC AUC | recall @0.1% FPR | recall @1% FPR | FPR at threshold | FNR at threshold |\n"
        f"|---|---|---|---|---|\n"
        f"| {m['roc_auc']:.5f} | {m['recall_at_fpr_0.1%']:.4f} | {m['recall_at_fpr_1%']:.4f} "
        f"| {m['fpr']:.4%} | {m['fnr']:.4%} |\n\n"
        f"Confusion at the threshold: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}.\n\n"
        f"{evaluation['verdict']}\n"
    )
