"""The classifier check: ML_SPAM / ML_HAM with probability and model, scaled scores, reload."""

from __future__ import annotations

import asyncio
import json
import shutil

from gateway.checks.classifier import log_odds
from gateway.config import PROJECT_ROOT, load_scores, load_settings
from gateway.events import EventFilter
from gateway.ml import model as model_module
from gateway.ml.model import current_model_dir, load_model
from gateway.service import Gateway
from gateway.types import Action
from tests.checks.golden import MESSAGES, offline_settings, scan_bytes
from tests.conftest import write_config

SPAM = (
    b'From: "Best Deals" <offers@cheap-meds.example>\r\nSubject: LOWEST PRICES on VIAGRA!!!\r\n'
    b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<html><body><font size=5>"
    b"<a href='http://cheap-meds.example/order'>CLICK HERE</a> to order now! 100% satisfaction"
    b" guaranteed. Remove me from this list: reply with REMOVE.</font></body></html>\r\n"
)


def classifier_settings(**section):
    return offline_settings(classifier={"enabled": True, **section})


SHIPPED_SCORES = load_scores(PROJECT_ROOT / "config" / "scores.toml")


def learned_points(details) -> float:
    """What the shipped (learned) scores give the model's log-odds."""
    entry = SHIPPED_SCORES["ML_SPAM"]
    return round(entry.weight * (details["log_odds"] - entry.offset), 3)


async def test_spam_gets_ml_spam_with_probability_and_model():
    verdict = await scan_bytes(SPAM, classifier_settings())
    [ml] = [s for s in verdict.symbols if s.check == "classifier"]
    assert ml.name == "ML_SPAM"
    assert ml.details["probability"] >= ml.details["threshold"]
    assert ml.details["model"].startswith("spamassassin-")
    # (the probability in the details is rounded to 6 places, the log-odds to 4)
    assert abs(ml.details["log_odds"] - log_odds(ml.details["probability"])) < 0.01
    # Learned scores: points per unit of log-odds, uncapped; the model's confident spam is
    # held with no other evidence.
    assert SHIPPED_SCORES["ML_SPAM"].per_log_odds
    assert ml.score == learned_points(ml.details)
    assert ml.score >= 10.0
    assert verdict.action in (Action.QUARANTINE, Action.REJECT)


async def test_ham_gets_ml_ham():
    verdict = await scan_bytes((MESSAGES / "clean.eml").read_bytes(), classifier_settings())
    [ml] = [s for s in verdict.symbols if s.check == "classifier"]
    assert ml.name == "ML_HAM"
    assert ml.details["probability"] < ml.details["threshold"]
    assert ml.score == learned_points(ml.details)
    assert ml.score < 5.0  # not even tagged
    assert verdict.action is Action.ACCEPT


async def test_a_message_at_the_model_threshold_reaches_quarantine_by_the_shipped_scores():
    threshold = load_model(current_model_dir(PROJECT_ROOT / "models")).threshold
    assert learned_points({"log_odds": log_odds(threshold)}) >= 10.0 - 0.01
    assert learned_points({"log_odds": log_odds(threshold * 0.9)}) < 10.0


async def test_hand_set_scores_scale_the_weight_by_confidence():
    settings = classifier_settings()
    hand = settings.policy.model_copy(
        update={"scores_file": PROJECT_ROOT / "config" / "scores-hand.toml"}
    )
    settings = settings.model_copy(update={"policy": hand})
    [spam] = [s for s in (await scan_bytes(SPAM, settings)).symbols if s.check == "classifier"]
    assert 4.0 <= spam.score <= 8.0  # half the weight at the threshold, all at certainty
    clean = (MESSAGES / "clean.eml").read_bytes()
    [ham] = [s for s in (await scan_bytes(clean, settings)).symbols if s.check == "classifier"]
    assert -2.0 <= ham.score < 0


async def test_threshold_override():
    verdict = await scan_bytes(SPAM, classifier_settings(threshold=0.999999))
    assert "ML_HAM" in verdict.symbol_names


def test_reload_keeps_the_last_good_model(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models)
    model_module._LOADED.clear()
    config = write_config(tmp_path / "c.toml", {
        "store": {"path": str(tmp_path / "store")},
        "checks.antivirus": {"enabled": False},
        "checks.auth": {"enabled": False},
        "checks.classifier": {"models_dir": str(models)},
    })  # fmt: skip

    async def scenario():
        gateway = Gateway(load_settings(config), config)
        good = gateway.pipeline
        model_id = (models / "CURRENT").read_text().strip()
        meta = json.loads((models / model_id / "metadata.json").read_text())
        meta["sha256"] = "0" * 64
        (models / model_id / "metadata.json").write_text(json.dumps(meta))
        model_module._LOADED.clear()
        assert not await gateway.reload()
        assert gateway.pipeline is good  # still serving with the good model
        [failed] = gateway.store.list(EventFilter(kind="reload_failed"))
        assert "does not match" in failed.reason
        await gateway.aclose()

    asyncio.run(scenario())


async def test_verdict_with_all_checks_defaults_stays_accept_for_clean_mail():
    settings = classifier_settings()
    verdict = await scan_bytes((MESSAGES / "clean.eml").read_bytes(), settings)
    assert verdict.action is Action.ACCEPT
