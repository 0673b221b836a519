"""The classifier check: ML_SPAM / ML_HAM with probability and model, scaled scores, reload."""

from __future__ import annotations

import asyncio
import json
import shutil

from gateway.config import PROJECT_ROOT, load_settings
from gateway.events import EventFilter
from gateway.ml import model as model_module
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


async def test_spam_gets_ml_spam_with_probability_and_model():
    verdict = await scan_bytes(SPAM, classifier_settings())
    [ml] = [s for s in verdict.symbols if s.check == "classifier"]
    assert ml.name == "ML_SPAM"
    assert ml.details["probability"] >= ml.details["threshold"]
    assert ml.details["model"].startswith("spamassassin-")
    assert 4.0 <= ml.score <= 8.0  # half the weight at the threshold, all at certainty


async def test_ham_gets_ml_ham():
    verdict = await scan_bytes((MESSAGES / "clean.eml").read_bytes(), classifier_settings())
    [ml] = [s for s in verdict.symbols if s.check == "classifier"]
    assert ml.name == "ML_HAM"
    assert ml.details["probability"] < ml.details["threshold"]
    assert -2.0 <= ml.score < 0


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
