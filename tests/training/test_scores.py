"""Learned scores: `mailmoat model scores` fits the symbols' weights and the model's."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.cli import main
from gateway.config import Score, load_scores, load_settings
from gateway.context import Envelope, ScanContext
from gateway.message import crlf_line_ends
from gateway.pipeline import Pipeline
from gateway.types import Action
from tests.conftest import write_config
from tests.training.test_loop import small_corpus  # noqa: F401  (the fixture)
from training.corpus import iter_messages
from training.scores import Sample, fit

CURRENT = {
    "SPAMMY": Score(2.0, "evidence of spam"),
    "HAMMY": Score(-1.0, "evidence of ham"),
    "MISLEADING": Score(3.0, "scored as spam, seen on ham"),
    "RARE": Score(4.0, "seen twice"),
}


def samples() -> list[Sample]:
    """Spam mostly SPAMMY, ham mostly HAMMY; MISLEADING on ham only; the model in between."""
    out = []
    for n in range(200):
        spam = n % 2
        symbols: dict[str, float] = {}
        if spam and n % 3:
            symbols["SPAMMY"] = 2.0
        if not spam and n % 5:
            symbols["HAMMY"] = -1.0
        if not spam and n % 7 == 0:
            symbols["MISLEADING"] = 3.0
        if n in (10, 11):
            symbols["RARE"] = 4.0
        odds = (2.0 if spam else -2.0) + (n % 11 - 5) * 0.5
        out.append(Sample(spam, odds, symbols, sum(symbols.values())))
    return out


def test_fit_keeps_signs_rare_symbols_and_anchors_the_model_at_quarantine():
    learned = fit(samples(), CURRENT, quarantine=10.0, target_fpr=0.01, model_threshold=0.9)
    assert learned.weights["SPAMMY"] > 0
    assert learned.weights["HAMMY"] < 0
    # Seen only on ham, it would learn a negative weight: held at 0 instead.
    assert learned.zeroed == ["MISLEADING"]
    assert learned.weights["MISLEADING"] == 0.0
    assert learned.kept == ["RARE"]
    assert learned.weights["RARE"] == 4.0
    assert learned.per_log_odds > 0
    # The model alone at its own threshold reaches quarantine (or the FPR target does first).
    at_threshold = learned.per_log_odds * (2.1972245773 - learned.offset)  # log-odds of 0.9
    assert at_threshold >= 10.0 - 1e-3
    # Points are a fixed multiple of the fitted log-odds (2 per unit with quarantine at 10).
    assert learned.per_log_odds == pytest.approx(2.0, rel=0.9)


def test_fit_needs_both_classes():
    only_spam = [s for s in samples() if s.label == 1]
    with pytest.raises(Exception, match="both spam and ham"):
        fit(only_spam, CURRENT, 10.0, 0.01, 0.9)


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "c.toml", {
        "store": {"path": str(tmp_path / "store")},
        "training": {"models_dir": str(tmp_path / "models"), "reports_dir": str(tmp_path / "r")},
    })  # fmt: skip


def test_model_scores_on_a_corpus_writes_a_scores_file_the_gateway_uses(
    small_corpus,  # noqa: F811
    config,
    tmp_path,
    capsys,
):
    out = tmp_path / "learned.toml"
    folders = small_corpus / "folders"
    code = main(["model", "scores", "--config", str(config), "--corpus", str(folders),
                 "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    provenance = result["provenance"]
    # The shipped model was trained on most of these messages: those are left out.
    assert provenance["left out (the model's training mail)"] > 100
    assert provenance["messages"] + provenance["left out (the model's training mail)"] == 240
    assert set(result["figures"]) == {"model alone", "overall, scores in force",
                                      "overall, learned (out of fold)"}  # fmt: skip
    for figures in result["figures"].values():
        assert 0.5 < figures["auc"] <= 1.0
    learned = load_scores(out)
    assert learned["ML_SPAM"].per_log_odds
    assert learned["ML_SPAM"].weight > 0
    assert learned["ML_HAM"] == learned["ML_SPAM"]
    text = out.read_text()
    assert "# Learned scores (mailmoat model scores)" in text
    assert '#   model: "spamassassin-' in text

    # In service: every spam message the model is sure of (at its threshold) is held.
    settings = load_settings(config)
    policy = settings.policy.model_copy(update={"scores_file": out})
    checks = {"antivirus": {"enabled": False}, "auth": {"enabled": False},
              "reputation": {"enabled": False}, "bulk": {"enabled": False},
              "classifier": {"models_dir": str(tmp_path / "models")}}  # fmt: skip
    settings = settings.model_copy(update={"policy": policy, "checks": checks})
    spam = [raw for source, raw in iter_messages(folders) if source.startswith("spam")]
    confident, held = asyncio.run(_held(settings, spam))
    assert confident > 20
    assert held == confident


async def _held(settings, messages) -> tuple[int, int]:
    pipeline = Pipeline.from_settings(settings)
    confident = held = 0
    try:
        for n, raw in enumerate(messages):
            envelope = Envelope(f"t.{n}", crlf_line_ends(raw), "", ("postmaster@localhost",))
            verdict = (await pipeline.scan(ScanContext(envelope))).verdict
            if "ML_SPAM" in verdict.symbol_names:
                confident += 1
                held += verdict.action in (Action.QUARANTINE, Action.REJECT)
    finally:
        await pipeline.aclose()
    return confident, held


def test_model_scores_says_what_it_needs(config, tmp_path, capsys):
    assert main(["model", "scores", "--config", str(config)]) == 2
    assert "--corpus PATH or --events" in capsys.readouterr().err
    assert main(["model", "scores", "--config", str(config), "--events"]) == 2
    assert "label more" in capsys.readouterr().err


def test_model_scores_from_labelled_events_as_the_gateway_scored_them(
    small_corpus,  # noqa: F811
    config,
    tmp_path,
    capsys,
):
    """--events: the symbols each event recorded, the model's training mail left out."""
    from gateway.events import Retained, SecurityEvent
    from gateway.store import SqliteStore
    from tests.checks.golden import offline_settings

    settings = offline_settings(classifier={"enabled": True})
    messages = [
        (source, crlf_line_ends(raw)) for source, raw in iter_messages(small_corpus / "folders")
    ]
    scanned = asyncio.run(_scan(settings, [raw for _, raw in messages]))
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    for n, ((source, _), (verdict, snapshot)) in enumerate(zip(messages, scanned, strict=True)):
        event = SecurityEvent(id=f"{n:016x}.1", kind="message", time=1000.0 + n,
                              score=verdict.score, action=verdict.action.value,
                              symbols=tuple(s.as_dict() for s in verdict.symbols))  # fmt: skip
        store.add(event, Retained(None, snapshot, 10_000_000_000.0))
        store.add_label(event.id, "spam" if source.startswith("spam") else "ham", "console", "ana")
    store.close()
    out = tmp_path / "events-scores.toml"
    assert main(["model", "scores", "--config", str(config), "--events", "--out", str(out),
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    provenance = result["provenance"]
    assert provenance["data"] == "labelled events"
    # As with a corpus: the events the shipped model was trained on are left out.
    assert provenance["left out (the model's training mail)"] > 100
    assert provenance["messages"] + provenance["left out (the model's training mail)"] == 240
    assert load_scores(out)["ML_SPAM"].per_log_odds


async def _scan(settings, raws):
    pipeline = Pipeline.from_settings(settings)
    results = []
    try:
        for n, raw in enumerate(raws):
            ctx = ScanContext(Envelope(f"e.{n}", raw, "", ("bob@example.test",)))
            verdict = (await pipeline.scan(ctx)).verdict
            results.append((verdict, ctx.features.to_dict()))
    finally:
        await pipeline.aclose()
    return results
