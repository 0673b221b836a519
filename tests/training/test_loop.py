"""The analysts' loop end to end on small data: dataset, train, evaluate, promote, rollback."""

from __future__ import annotations

import json
import mailbox
from dataclasses import replace

import pytest

from bench.common import load_corpus
from gateway.cli import main
from gateway.events import EventFilter, Retained, SecurityEvent
from gateway.message import ParsedMessage
from gateway.ml.features import extract
from gateway.store import SqliteStore
from tests.conftest import write_config
from training import dataset as datasets
from training.corpus import iter_messages, label_from_path


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """120 ham and 120 spam from the SpamAssassin corpus, as folders, an mbox and a Maildir."""
    root = tmp_path_factory.mktemp("corpus")
    messages = load_corpus()
    ham = [m for m in messages if "ham" in m[0]][:120]
    spam = [m for m in messages if m[0].startswith("spam")][:120]
    for label, items in (("ham", ham), ("spam", spam)):
        (root / "folders" / label).mkdir(parents=True)
        for n, (_, raw) in enumerate(items):
            (root / "folders" / label / f"{n:04d}.eml").write_bytes(raw)
    box = mailbox.mbox(root / "reported.mbox")
    for _, raw in spam[:3]:
        box.add(raw)
    box.close()
    maildir = mailbox.Maildir(root / "maildir", create=True)
    for _, raw in ham[:2]:
        maildir.add(raw)
    return root


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "c.toml", {
        "store": {"path": str(tmp_path / "store")},
        "training": {"models_dir": str(tmp_path / "models"), "datasets_dir": str(tmp_path / "ds"),
                     "reports_dir": str(tmp_path / "reports"), "target_fpr": 0.01},
    })  # fmt: skip


def test_corpus_readers(small_corpus):
    assert len(list(iter_messages(small_corpus / "reported.mbox"))) == 3
    assert len(list(iter_messages(small_corpus / "maildir"))) == 2
    sources = [s for s, _ in iter_messages(small_corpus / "folders")]
    assert sources[0] == "ham/0000.eml"
    assert label_from_path("spam-2/00001.eml") == "spam"
    assert label_from_path("easy-ham-1/00001.eml") == "ham"
    assert label_from_path("misc/00001.eml") is None


def test_train_evaluate_promote_rollback(small_corpus, config, tmp_path, capsys):
    cfg = ["--config", str(config)]
    data = tmp_path / "ds" / "small.jsonl.gz"
    assert main(["model", "dataset", *cfg, "--corpus", str(small_corpus / "folders"),
                 "--split", "seed", "--out", str(data)]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "ds" / "small.json").read_text())
    assert summary["counts"]["train_ham"] + summary["counts"]["test_ham"] <= 120
    assert {r.split for r in datasets.read(data)} == {"train", "test"}

    assert main(["model", "train", *cfg, str(data), "--name", "first"]) == 0
    first = next(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith("first-"))
    assert main(["model", "evaluate", *cfg, first, "--on", str(data)]) == 0
    out = capsys.readouterr().out
    assert "candidate first-" in out
    report = tmp_path / "reports" / f"evaluation-{first}.html"
    page = report.read_text()
    for plot in ("roc", "pr", "hist_candidate", "calibration"):
        assert f"<figcaption>{plot}</figcaption>" in page
    # The registry started from the shipped model (a state directory seeded on first use),
    # which beats a model of 120 messages: refused, then promoted on purpose.
    assert (tmp_path / "models" / "CURRENT").read_text().strip().startswith("spamassassin-")
    capsys.readouterr()
    assert main(["model", "promote", *cfg, first]) == 1
    assert "refused" in capsys.readouterr().err
    assert main(["model", "promote", *cfg, first, "--force"]) == 0
    assert (tmp_path / "models" / "CURRENT").read_text().strip() == first

    # A candidate trained on flipped labels is worse at the operating point: refused.
    flipped = tmp_path / "ds" / "flipped.jsonl.gz"
    records = datasets.read(data)
    flip = {"spam": "ham", "ham": "spam"}
    swapped = [replace(r, label=flip[r.label]) if r.split == "train" else r for r in records]
    datasets.write(swapped, flipped, {})
    assert main(["model", "train", *cfg, str(flipped), "--name", "worse"]) == 0
    worse = next(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith("worse-"))
    assert main(["model", "promote", *cfg, worse]) == 1  # not evaluated yet
    assert main(["model", "evaluate", *cfg, worse, "--on", str(data)]) == 0
    assert "candidate is worse" in capsys.readouterr().out
    assert main(["model", "promote", *cfg, worse]) == 1
    assert "refused" in capsys.readouterr().err
    assert main(["model", "promote", *cfg, worse, "--force"]) == 0
    assert main(["model", "rollback", *cfg]) == 0
    assert (tmp_path / "models" / "CURRENT").read_text().strip() == first
    assert main(["model", "list", *cfg]) == 0
    listing = capsys.readouterr().out
    assert f"* {first}" in listing
    assert main(["model", "show", *cfg, first]) == 0
    assert "# Model first-" in capsys.readouterr().out


def test_labelled_events_become_a_dataset(small_corpus, config, tmp_path, capsys):
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    raws = [raw for _, raw in iter_messages(small_corpus / "folders")]
    for n, raw in enumerate(raws[:10] + raws[-10:]):
        event = SecurityEvent(id=f"{n:016x}.1", kind="message", time=1000.0 + n, subject=f"m{n}")
        snapshot = extract(ParsedMessage.parse(raw)).to_dict()
        # Half the messages keep their raw bytes, half only the feature snapshot.
        store.add(event, Retained(raw if n % 2 else None, snapshot, 2000.0))
        store.add_label(event.id, "spam" if n >= 10 else "ham", "console", "ana")
    store.withdraw_labels(f"{0:016x}.1", "ana")
    # Labelled, but with nothing to learn from: no snapshot (no check read its features)
    # and no raw (not sampled). It is left out, and said so.
    store.add(SecurityEvent(id="00000000000000ff.1", kind="message", time=1050.0),
              Retained(None, None, 2000.0))  # fmt: skip
    store.add_label("00000000000000ff.1", "spam", "console", "ana")
    assert store.purge(now=3000.0) == {"raw_messages": 0, "events": 0}  # labelled: kept
    store.close()
    out = tmp_path / "ds" / "events.jsonl.gz"
    assert main(["model", "dataset", "--config", str(config), "--events", "--split", "time",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "1 labelled events left out" in capsys.readouterr().err
    records = datasets.read(out)
    assert len(records) == 19  # the withdrawn one and the featureless one are out
    assert {r.label for r in records} == {"spam", "ham"}
    newest = max(records, key=lambda r: r.time)
    assert newest.split == "test"


def test_learn_matches_events_by_message_id_and_stores_samples(
    small_corpus, config, tmp_path, capsys
):
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    raw = next(iter_messages(small_corpus / "reported.mbox"))[1]
    message_id = ParsedMessage.parse(raw).message_id
    store.add(SecurityEvent(id="00000000000000aa.1", kind="message", message_id=message_id))
    store.close()
    assert main(["learn", "--config", str(config), "--spam", str(small_corpus / "reported.mbox"),
                 "--by", "alice"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == {
        "matched": 1,
        "samples": 2,
        "withdrawn": 0,
        "skipped": 0,
    }
    assert (
        main(["label", "--config", str(config), "00000000000000aa.1", "--history", "--json"]) == 0
    )
    [label] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (label["label"], label["source"], label["author"]) == ("spam", "report", "alice")
    assert (
        main(["learn", "--config", str(config), "--forget", str(small_corpus / "reported.mbox")])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["withdrawn"] >= 1
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    assert store.current_label("00000000000000aa.1") is None
    samples = store.list(EventFilter(kind="sample"))
    assert len(samples) == 2
    store.close()


def test_label_command(config, tmp_path, capsys):
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    store.add(SecurityEvent(id="00000000000000bb.1", kind="message"))
    store.close()
    cfg = ["--config", str(config)]
    assert (
        main(["label", *cfg, "00000000000000bb.1", "phish", "--note", "fake bank", "--by", "bo"])
        == 0
    )
    assert main(["label", *cfg, "00000000000000bb.1", "ham", "--by", "cy"]) == 0
    assert main(["label", *cfg, "00000000000000bb.1", "--history"]) == 0
    history = capsys.readouterr().out
    for text in ("phish", "ham", "fake bank"):
        assert text in history
    assert main(["label", *cfg, "00000000000000bb.1", "--withdraw"]) == 0
    assert main(["label", *cfg, "00000000000000ff.1", "spam"]) == 1  # no such event
    assert main(["label", *cfg, "../../x", "spam"]) == 1


def test_shipped_model_card_figures_match_its_evaluation():
    from gateway.config import PROJECT_ROOT

    models = PROJECT_ROOT / "models"
    model_id = (models / "CURRENT").read_text().strip()
    evaluation = json.loads((models / model_id / "evaluation.json").read_text())
    metrics = evaluation["models"]["candidate"]
    # The fixed split's test part (860 ham, 404 spam) less its copies of training messages.
    overlap = evaluation["training_overlap"]["excluded"]
    assert evaluation["n_ham"] + evaluation["n_spam"] + overlap == 860 + 404
    assert overlap < 50
    assert metrics["roc_auc"] >= 0.9999
    assert metrics["recall_at_fpr_0.1%"] >= 0.98
    card = (models / model_id / "MODEL_CARD.md").read_text()
    assert f"{metrics['roc_auc']:.5f}" in card


def test_a_time_split_without_spam_to_test_stops_before_training(small_corpus, config, tmp_path,
                                                                   capsys):  # fmt: skip
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    raws = [raw for _, raw in iter_messages(small_corpus / "folders")]
    for n, raw in enumerate(raws[:20]):  # the oldest labelled spam, every recent one ham
        event = SecurityEvent(id=f"{n:016x}.1", kind="message", time=1000.0 + n, subject=f"m{n}")
        store.add(event, Retained(raw, extract(ParsedMessage.parse(raw)).to_dict(), None))
        store.add_label(event.id, "spam" if n < 5 else "ham", "console", "ana")
    store.close()
    out = tmp_path / "ds" / "recent.jsonl.gz"
    assert main(["model", "dataset", "--config", str(config), "--events", "--split", "time",
                 "--out", str(out)]) == 2  # fmt: skip
    said = capsys.readouterr().err
    assert "holds no spam: label spam among recent events" in said
    assert not out.exists()


def test_learn_watch_turns_junk_moves_into_labels(config, tmp_path, capsys):
    """A message moved into Junk is spam by its user; moved back out, ham."""
    import mailbox

    root = tmp_path / "carol"
    inbox = mailbox.Maildir(root, create=True)
    junk = inbox.add_folder("Junk")  # Maildir++: root/.Junk
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    store.add(SecurityEvent(id=f"{0x77:016x}.1", kind="message", message_id="<seen@x.test>",
                            subject="Seen by the gateway"))  # fmt: skip
    store.close()
    seen = b"Message-ID: <seen@x.test>\nSubject: Seen by the gateway\n\nhi\n"
    unseen = b"Message-ID: <never@x.test>\nSubject: Not through us\n\nbuy\n"
    key = junk.add(seen)
    junk.add(unseen)
    cfg = ["--config", str(config)]
    assert main(["learn", *cfg, "--watch", str(root), "--once"]) == 0
    assert '"spam": 2' in capsys.readouterr().out
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    label = store.current_label(f"{0x77:016x}.1")
    assert (label.label, label.source, label.author) == ("spam", "user", "carol")
    store.close()
    assert main(["learn", *cfg, "--watch", str(root), "--once"]) == 0  # nothing moved
    assert capsys.readouterr().out == ""
    inbox.add(junk.get_bytes(key))  # the user moves it back to the inbox
    junk.remove(key)
    assert main(["learn", *cfg, "--watch", str(root), "--once"]) == 0
    assert '"ham": 1' in capsys.readouterr().out
    store = SqliteStore(tmp_path / "store" / "events.sqlite3")
    assert store.current_label(f"{0x77:016x}.1").label == "ham"
    [sample] = store.list(EventFilter(kind="sample", limit=10))  # never seen: kept as a sample
    assert sample.message_id == "<never@x.test>"
    assert store.current_label(sample.id).label == "spam"
    store.close()


def test_evaluate_leaves_out_the_messages_a_model_was_trained_on(small_corpus, config, tmp_path,
                                                                 capsys):  # fmt: skip
    """A test split that overlaps the training data would flatter the model: left out."""
    cfg = ["--config", str(config)]
    first, second = tmp_path / "ds" / "one.jsonl.gz", tmp_path / "ds" / "two.jsonl.gz"
    for path, seed in ((first, "1"), (second, "2")):  # two random splits of the same mail
        assert main(["model", "dataset", *cfg, "--corpus", str(small_corpus / "folders"),
                     "--split", "seed", "--seed", seed, "--out", str(path)]) == 0  # fmt: skip
    assert main(["model", "train", *cfg, str(first), "--name", "one"]) == 0
    model = next(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith("one-"))
    trained = {datasets.content_key(r.features) for r in datasets.read(first) if r.split == "train"}
    test = [r for r in datasets.read(second) if r.split == "test"]
    overlapping = sum(datasets.content_key(r.features) in trained for r in test)
    assert 0 < overlapping < len(test)
    capsys.readouterr()
    assert main(["model", "evaluate", *cfg, model, "--on", str(second), "--against", model]) == 0
    out = capsys.readouterr().out
    assert f"left out: {overlapping} test messages a model was trained on" in out
    evaluation = json.loads((tmp_path / "models" / model / "evaluation.json").read_text())
    assert evaluation["training_overlap"] == {"excluded": overlapping, "unknown_for": []}
    assert evaluation["n_ham"] + evaluation["n_spam"] == len(test) - overlapping
    # Evaluated on its own training split: nothing is left to test, and it says why.
    trained_only = tmp_path / "ds" / "trained.jsonl.gz"
    records = [replace(r, split="test") for r in datasets.read(first) if r.split == "train"]
    datasets.write(records, trained_only, {})
    assert main(["model", "evaluate", *cfg, model, "--on", str(trained_only),
                 "--against", model]) == 2  # fmt: skip
    assert "once the messages the models were trained on are left out" in capsys.readouterr().err


def test_cross_source_evaluation_trains_on_some_sources_and_tests_on_others(tmp_path, capsys):
    """`model evaluate --cross`: every split the folders allow, the model beside the baseline."""
    messages = load_corpus()
    root = tmp_path / "corpus"
    picks = {"easy_ham": [m for m in messages if m[0].startswith("easy-ham-1")][:40],
             "hard_ham": [m for m in messages if m[0].startswith("hard-ham")][:40],
             "spam": [m for m in messages if m[0].startswith("spam-1")][:40],
             "spam_2": [m for m in messages if m[0].startswith("spam-2")][:40]}  # fmt: skip
    for folder, items in picks.items():
        (root / folder).mkdir(parents=True)
        for n, (_, raw) in enumerate(items):
            (root / folder / f"{n:03d}.eml").write_bytes(raw)
    assert main(["model", "evaluate", "--cross", "--corpus", str(root), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    names = [r["split"] for r in results]
    assert names[0] == "sources: easy_ham + spam -> hard_ham + spam_2"
    assert names[1] == "by period: older 70% -> newest 30%"
    # The pair hard_ham + spam_2 is the first split already: not tested twice.
    assert sorted(names[2:]) == ["leave out easy_ham + spam", "leave out easy_ham + spam_2",
                                 "leave out hard_ham + spam"]  # fmt: skip
    first = results[0]
    assert (first["train"], first["test"]) == (80, 80)
    assert set(first["models"]) == {"Mailmoat model", "baseline TF-IDF + LR",
                                    "model alone, 5-fold mean",
                                    "overall score, learned, 5-fold mean"}  # fmt: skip
    for figures in first["models"].values():
        assert 0.0 <= figures["auc"] <= 1.0
        assert 0.0 <= figures.get("ham_fpr_at_90%_caught", 0.0) <= 1.0
    # The model alone on the folds of the overall score ranks as the model on the whole part.
    alone = first["models"]["model alone, 5-fold mean"]["auc"]
    assert abs(alone - first["models"]["Mailmoat model"]["auc"]) < 0.1
    # Without --corpus, or on mail whose folders say nothing, it says what it needs.
    assert main(["model", "evaluate", "--cross"]) == 2
    assert "--cross needs --corpus" in capsys.readouterr().err
