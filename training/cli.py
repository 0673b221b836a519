"""`mailmoat model ...` and `mailmoat learn`: the analysts' commands (loaded only when used)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import SHIPPED, Settings
from gateway.context import new_connection_id
from gateway.errors import ConfigError
from gateway.events import Retained, SecurityEvent, parse_time
from gateway.message import ParsedMessage
from gateway.ml.features import FEATURE_VERSION, extract
from gateway.ml.model import load_model, seeded_registry
from gateway.store import open_store
from training import dataset as datasets
from training import registry
from training.corpus import iter_messages
from training.evaluate import evaluate
from training.train import train


def add_model_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `mailmoat model ...` on the main parser."""
    model = sub.add_parser("model", help="build datasets, train, evaluate, promote, roll back")
    msub = model.add_subparsers(dest="mcommand", required=True)
    ds = msub.add_parser("dataset", parents=[common], help="build a dataset")
    ds.add_argument("--corpus", action="append", default=[], metavar="PATH",
                    help="directory, Maildir, mbox or tar; spam/ham from folder names")  # fmt: skip
    ds.add_argument("--events", action="store_true", help="include labelled events")
    ds.add_argument("--since")
    ds.add_argument("--until")
    ds.add_argument("--split", choices=["time", "seed", "md5"], default="time",
                    help="time: newest as test; seed: random; md5: SpamAssassin split")  # fmt: skip
    ds.add_argument("--test-fraction", type=float, default=0.2)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--keep-duplicates", action="store_true",
                    help="keep repeats (to reproduce a published split exactly)")  # fmt: skip
    ds.add_argument("--out", help="output file (default: <datasets_dir>/dataset-<time>.jsonl.gz)")
    tr = msub.add_parser("train", parents=[common], help="train a candidate into the registry")
    tr.add_argument("dataset")
    tr.add_argument("--name", default="mailmoat", help="id prefix")
    ev = msub.add_parser("evaluate", parents=[common], help="report on held-out data")
    ev.add_argument("candidate", nargs="?")
    ev.add_argument("--against", default="current", help="'current' or a model id")
    ev.add_argument("--on", dest="dataset", metavar="DATASET")
    ev.add_argument(
        "--cross",
        action="store_true",
        help="train on some sources of a corpus, test on others (with a baseline)",
    )
    ev.add_argument("--corpus", help="for --cross: folders, an mbox or a .tar.gz of labelled mail")
    ev.add_argument("--splits", type=int, metavar="N", help="for --cross: the first N splits")
    ev.add_argument("--json", action="store_true", help="for --cross: JSON")
    sc = msub.add_parser("scores", parents=[common],
                         help="learn every symbol's weight from labelled mail")  # fmt: skip
    sc.add_argument("--corpus", metavar="PATH",
                    help="labelled folders, an mbox or a .tar.gz, scanned offline")  # fmt: skip
    sc.add_argument("--events", action="store_true", help="labelled events, as scored then")
    sc.add_argument("--since")
    sc.add_argument("--until")
    sc.add_argument("--model", help="model id (default: the one in service)")
    sc.add_argument("--base", metavar="FILE",
                    help="the scores to start from: signs, and the weights of symbols the data "
                         "do not show (default: [policy] scores_file)")  # fmt: skip
    sc.add_argument("--min-count", type=int, default=5, metavar="N",
                    help="symbols seen on fewer messages keep their hand-set weight")  # fmt: skip
    sc.add_argument(
        "--out", help="scores file to write (default: <reports_dir>/scores-<time>.toml)"
    )
    sc.add_argument("--json", action="store_true", help="print the figures as JSON")
    pr = msub.add_parser("promote", parents=[common], help="put a candidate in service")
    pr.add_argument("id")
    pr.add_argument("--force", action="store_true", help="even if worse than the model in service")
    msub.add_parser("rollback", parents=[common], help="put the previous model back")
    msub.add_parser("list", parents=[common], help="models in the registry")
    sh = msub.add_parser("show", parents=[common], help="metadata and model card")
    sh.add_argument("id")
    for parser in msub.choices.values():
        parser.set_defaults(func=cmd_model)

    learn = sub.add_parser(
        "learn", parents=[common], help="label reported messages (like sa-learn)"
    )
    kind = learn.add_mutually_exclusive_group(required=True)
    kind.add_argument("--watch", metavar="MAILDIR", type=Path,
                      help="a user's Maildir: moves into Junk are spam, out of it ham")  # fmt: skip
    kind.add_argument("--spam", action="store_const", const="spam", dest="label")
    kind.add_argument("--ham", action="store_const", const="ham", dest="label")
    kind.add_argument("--phish", action="store_const", const="phish", dest="label")
    kind.add_argument("--forget", action="store_const", const="forget", dest="label",
                      help="withdraw labels learned for these messages (unlearn)")  # fmt: skip
    learn.add_argument("paths", nargs="*", metavar="PATH", help="files, Maildirs or mbox files")
    learn.add_argument("--user", help="--watch: whose Maildir (default: its folder's name)")
    learn.add_argument("--junk", default="Junk", help="--watch: the junk folder (Maildir++)")
    learn.add_argument(
        "--interval", type=float, default=60.0, help="--watch: seconds between looks"
    )
    learn.add_argument("--once", action="store_true", help="--watch: one look, then exit")
    learn.add_argument("--by", default=os.environ.get("USER", "cli"), help="who reports")
    learn.set_defaults(func=cmd_learn)


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    cfg = settings.training
    models = seeded_registry(cfg.models_dir, SHIPPED / "models")
    command = args.mcommand
    if command == "dataset":
        return _dataset(args, settings)
    if command == "train":
        model_id = train(Path(args.dataset), models, cfg.c, cfg.target_fpr, args.name)
        meta = json.loads((models / model_id / "metadata.json").read_text())
        oof = meta["metrics"]["out_of_fold"]
        print(f"trained {model_id} in {meta['training_seconds']}s; "
              f"threshold {meta['threshold']:.6f}; out-of-fold AUC {oof['roc_auc']:.5f}, "
              f"recall@0.1% {oof['recall_at_fpr_0.1%']:.4f}")  # fmt: skip
        print(f"next: mailmoat model evaluate {model_id} --on {args.dataset}")
        return 0
    if command == "evaluate" and args.cross:
        return _cross(args, settings)
    if command == "evaluate":
        if not args.candidate or not args.dataset:
            raise ConfigError("model evaluate needs a CANDIDATE and --on DATASET (or --cross)")
        result = evaluate(args.candidate, models, Path(args.dataset), args.against, cfg.reports_dir,
                          cfg.target_fpr)  # fmt: skip
        _print_evaluation(result)
        return 0
    if command == "scores":
        return _scores(args, settings, models)
    if command == "promote":
        return _promote(models, args.id, args.force)
    if command == "rollback":
        print(f"rolled back to {registry.rollback(models)}; send SIGHUP to the gateway to load it")
        return 0
    if command == "list":
        current = registry.current_id(models)
        for meta in registry.artefacts(models):
            evaluation = registry.evaluation(models, meta["id"])
            test = evaluation["models"]["candidate"] if evaluation else None
            shown = (
                f"test AUC {test['roc_auc']:.5f} recall@0.1% {test['recall_at_fpr_0.1%']:.4f}"
                if test
                else "not evaluated"
            )
            mark = "*" if meta["id"] == current else " "
            print(f"{mark} {meta['id']}  threshold {meta['threshold']:.4f}  {shown}")
        return 0
    if command == "show":
        directory = models / args.id
        print(json.dumps(json.loads((directory / "metadata.json").read_text()), indent=2))
        card = directory / "MODEL_CARD.md"
        if card.exists():
            print(card.read_text())
        return 0
    raise ConfigError(f"unknown model command {command}")


def _dataset(args: argparse.Namespace, settings: Settings) -> int:
    records: list[datasets.Record] = []
    left_out: list[str] = []  # labelled events that cannot be featurised
    for path in args.corpus:
        records.extend(datasets.from_corpus(Path(path)))
    if args.events:
        store = open_store(settings.store)
        try:
            since = parse_time(args.since) if args.since else None
            until = parse_time(args.until) if args.until else None
            records.extend(datasets.from_events(store, since, until, left_out))
        finally:
            store.close()
        if left_out:
            print(f"warning: {len(left_out)} labelled events left out: neither a feature "
                  f"snapshot of version {FEATURE_VERSION} nor the raw message is kept for them "
                  f"(e.g. {', '.join(left_out[:3])})", file=sys.stderr)  # fmt: skip
    if not records:
        raise ConfigError("no labelled messages: give --corpus PATH and/or --events")
    unique = records if args.keep_duplicates else datasets.deduplicate(records)
    split = datasets.assign_split(unique, args.split, args.test_fraction, args.seed)
    tested = {r.label for r in split if r.split == "test"}
    if "spam" not in tested:
        # An evaluation without spam measures nothing a promotion could rest on.
        newest = "newest " if args.split == "time" else ""
        raise ConfigError(
            f"the test part ({newest}{args.test_fraction:.0%} of {len(split)} messages) holds "
            "no spam: label spam among recent events first (mailmoat events list --since 7d, "
            "then mailmoat label ID spam, or many at once: ... --json | mailmoat label - spam)"
            + (", or use --split seed" if args.split == "time" else "")
        )
    if "ham" not in tested:
        print("warning: the test part holds no ham: false positives cannot be measured",
              file=sys.stderr)  # fmt: skip
    from datetime import UTC, datetime

    out = Path(args.out) if args.out else settings.training.datasets_dir / (
        f"dataset-{datetime.now(UTC):%Y%m%d-%H%M%S}.jsonl.gz")  # fmt: skip
    description = {"corpora": args.corpus, "events": args.events, "split": args.split,
                   "duplicates_dropped": len(records) - len(unique),
                   "events_left_out": len(left_out)}  # fmt: skip
    summary = datasets.write(split, out, description)
    print(
        f"wrote {out}: {json.dumps(summary['counts'])}, "
        f"{summary['duplicates_dropped']} duplicates dropped"
    )
    return 0


def _scores(args: argparse.Namespace, settings: Settings, models: Path) -> int:
    """``model scores``: fit the symbols' weights, print the figures, write a scores file."""
    from gateway.config import load_scores
    from gateway.pipeline import known_symbols
    from training import scores

    if bool(args.corpus) == bool(args.events):
        raise ConfigError("model scores needs --corpus PATH or --events (one of them)")
    model_id = args.model or registry.current_id(models)
    if not model_id or not (models / model_id).is_dir():
        raise ConfigError(f"no model {model_id!r} in {models}")
    model = load_model(models / model_id)
    trained = registry.training_keys(models / model_id)
    if trained is None:
        raise ConfigError(f"{model_id} was trained before training keys were kept: its own "
                          "training mail cannot be told apart (train it again)")  # fmt: skip
    section = {**settings.check_section("classifier"), "enabled": True,
               "models_dir": str(models), "model": model_id}  # fmt: skip
    base = Path(args.base) if args.base else settings.policy.scores_file
    policy = settings.policy.model_copy(update={"scores_file": base})
    settings = settings.model_copy(
        update={"checks": {**settings.checks, "classifier": section}, "policy": policy}
    )
    threshold = settings.check_section("classifier").get("threshold") or model.threshold
    if args.corpus:
        samples, excluded = scores.scan_corpus(Path(args.corpus), settings, trained)
        source = f"corpus {args.corpus} (offline checks: {', '.join(scores.OFFLINE_OFF)} off)"
    else:
        store = open_store(settings.store)
        try:
            since = parse_time(args.since) if args.since else None
            until = parse_time(args.until) if args.until else None
            samples, excluded = scores.from_events(store, since, until, trained)
        finally:
            store.close()
        source = "labelled events" + (f" since {args.since}" if args.since else "")
    spam = sum(s.label for s in samples)
    if spam < scores.FOLDS or len(samples) - spam < scores.FOLDS:
        raise ConfigError(f"{len(samples)} usable labelled messages ({spam} spam) after leaving "
                          f"out {excluded} the model was trained on: label more (at least "
                          f"{scores.FOLDS} of each)")  # fmt: skip
    current = load_scores(base)
    quarantine = settings.policy.quarantine
    fpr = settings.training.target_fpr
    learned = scores.fit(samples, current, quarantine, fpr, threshold, args.min_count)
    figures = scores.figures(samples, current, quarantine, fpr, threshold, args.min_count)
    out = Path(args.out) if args.out else settings.training.reports_dir / (
        f"scores-{scores.stamp()}.toml")  # fmt: skip
    provenance = {
        "written": scores.stamp(), "data": source, "messages": len(samples), "spam": spam,
        "left out (the model's training mail)": excluded, "model": model_id,
        "model threshold": threshold, "base scores": str(args.base or base),
        "quarantine threshold": quarantine, "target ham FPR": fpr,
        "anchored at": learned.anchor, "min_count": args.min_count,
        "figures (out of fold)": figures["overall, learned (out of fold)"],
    }  # fmt: skip
    scores.write_scores(out, current, learned, provenance, {s: "" for s in known_symbols([])})
    if args.json:
        print(json.dumps({"out": str(out), "provenance": provenance, "figures": figures,
                          "weights": learned.weights, "per_log_odds": learned.per_log_odds},
                         indent=1))  # fmt: skip
        return 0
    print(f"{len(samples)} labelled messages ({spam} spam) from {source}; {excluded} left out "
          f"(the model {model_id} was trained on them)")  # fmt: skip
    print(f"{'':<34} {'AUC':>8} {'r@0.1%':>7} {'r@1%':>7} {'spam held':>9} {'ham held':>9} "
          f"{'confident spam held':>19}")  # fmt: skip
    for name, m in figures.items():
        print(f"{name:<34} {m['auc']:>8.5f} {m['recall_at_0.1%']:>7.4f} "
              f"{m['recall_at_1%']:>7.4f} {m['spam_held']:>9.2%} {m['ham_held']:>9.2%} "
              f"{m['confident_spam_held']:>19.2%}")  # fmt: skip
    print(f"ML_SPAM/ML_HAM: {learned.per_log_odds:g} points per unit of log-odds above "
          f"{learned.offset:g} (quarantine anchored at {learned.anchor}); "
          f"{len(learned.fitted)} symbols learned, "
          f"{len(learned.zeroed)} fitted at 0 to keep their sign, "
          f"{len(learned.kept)} kept")  # fmt: skip
    print(f'wrote {out}; to use it: [policy] scores_file = "{out}", then mailmoat config check')
    return 0


def _cross(args: argparse.Namespace, settings: Settings) -> int:
    """``model evaluate --cross``: both models on every cross-source split of the corpus."""
    from training.cross import cross

    if not args.corpus:
        raise ConfigError("--cross needs --corpus PATH (folders named like easy_ham, spam_2...)")
    results = cross(Path(args.corpus), args.splits, settings)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    if not results:
        raise ConfigError(
            f"{args.corpus}: no split with spam and ham on both sides (it needs folders"
            " named like easy_ham, hard_ham, spam, spam_2, or dated mail)"
        )
    print(f"{'split / model':<58} {'AUC':>8} {'r@0.1%':>7} {'r@1%':>7} {'hamFPR@90%':>10}")
    for result in results:
        print(f"{result['split']} ({result['train']} train, {result['test']} test)")
        for name, m in result["models"].items():
            if "error" in m:
                print(f"  {name:<56} not measured: {m['error']}")
                continue
            fpr = m.get("ham_fpr_at_90%_caught")
            shown = "" if fpr is None else f"{fpr:>10.4%}"
            print(f"  {name:<56} {m['auc']:>8.5f} {m['recall_at_0.1%']:>7.4f} "
                  f"{m['recall_at_1%']:>7.4f} {shown}")  # fmt: skip
    return 0


def _print_evaluation(result: dict[str, Any]) -> None:
    print(
        f"test split: {result['n_ham']} ham, {result['n_spam']} spam; "
        f"target FPR {result['target_fpr']:.3%}"
    )
    overlap = result["training_overlap"]
    if overlap["excluded"]:
        print(f"left out: {overlap['excluded']} test messages a model was trained on "
              "(they would flatter it)")  # fmt: skip
    for model_id in overlap["unknown_for"]:
        print(f"warning: {model_id} keeps no record of its training messages: an overlap "
              "with this test split cannot be seen")  # fmt: skip
    print(f"{'model':<34} {'AUC':>8} {'r@0.1%':>7} {'r@1%':>7} {'FPR':>8} {'FNR':>8}  confusion")
    for role, m in result["models"].items():
        c = m["confusion"]
        print(f"{role + ' ' + m['id']:<34.34} {m['roc_auc']:>8.5f} {m['recall_at_fpr_0.1%']:>7.4f} "
              f"{m['recall_at_fpr_1%']:>7.4f} {m['fpr']:>8.4%} {m['fnr']:>8.4%}  "
              f"TP {c['tp']} FP {c['fp']} FN {c['fn']} TN {c['tn']}")  # fmt: skip
    print(result["verdict"])
    print(f"report: {result['report']}")


def _promote(models: Path, model_id: str, force: bool) -> int:
    evaluation = registry.evaluation(models, model_id)
    current = registry.current_id(models)
    if not force and current and current != model_id:
        if evaluation is None:
            print(
                f"refused: evaluate {model_id} against the current model first (or --force)",
                file=sys.stderr,
            )
            return 1
        if evaluation.get("against") != current:
            print(f"refused: {model_id} was evaluated against {evaluation.get('against')}, "
                  f"but {current} is in service now; evaluate again (or --force)",
                  file=sys.stderr)  # fmt: skip
            return 1
        if not evaluation["better_than_against"]:
            print(f"refused: {evaluation['verdict']} (--force to promote anyway)", file=sys.stderr)
            return 1
    registry.set_current(models, model_id)
    print(f"{model_id} is now in service; send SIGHUP to the gateway to load it (was: {current})")
    return 0


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    """Label reported messages: matched to events by Message-ID, else stored as samples."""
    if args.watch is not None:
        return _watch(args, settings)
    if not args.paths:
        raise ConfigError("give the files, Maildirs or mbox files to learn from")
    store = open_store(settings.store)
    counts = {"matched": 0, "samples": 0, "withdrawn": 0, "skipped": 0}
    try:
        for path in args.paths:
            for _, raw in iter_messages(Path(path)):
                message = ParsedMessage.parse(raw)
                matches = store.find_by_message_id(message.message_id) if message.message_id else []
                if args.label == "forget":
                    for event_id in matches:
                        counts["withdrawn"] += store.withdraw_labels(event_id, args.by)
                    if not matches:
                        counts["skipped"] += 1
                    continue
                if matches:
                    store.add_label(matches[0], args.label, "report", args.by)
                    counts["matched"] += 1
                    continue
                # Not seen by this gateway (or expired): keep it as a sample event with its label.
                event = SecurityEvent(
                    id=f"{new_connection_id()}.1", kind="sample", mail_from="",
                    message_id=message.message_id[:500], subject=message.subject[:500],
                    size=len(raw), action="sample", details={"source": str(path)},
                )  # fmt: skip
                store.add(event, Retained(raw, extract(message).to_dict(), None))
                store.add_label(event.id, args.label, "report", args.by)
                counts["samples"] += 1
    finally:
        store.close()
    print(json.dumps(counts))
    return 0


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    import hashlib

    from training.watch import watch

    root = args.watch.resolve()
    user = args.user or root.name
    state = settings.store.path / "learn-watch" / (
        hashlib.sha256(str(root).encode()).hexdigest()[:16] + ".json")  # fmt: skip
    store = open_store(settings.store)
    try:
        watch(store, root, user, args.junk, state, args.interval,
              lambda counts: print(json.dumps({"user": user, **counts}), flush=True),
              passes=1 if args.once else None)  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def check_model_loads(models: Path) -> str:
    """For `config check`: the id of the model in service, loaded and verified."""
    return load_model(models / (registry.current_id(models) or "")).id
