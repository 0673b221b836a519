"""The classifier: per-message latency (features + prediction), training time, memory.

Run:  .venv/bin/python -m bench.classifier [--train]

Classifies every message of the SpamAssassin corpus's test split one at a time, as the
gateway does, with the model in service (models/CURRENT), and prints latency percentiles
of feature extraction, prediction and both; the process's memory before and after loading
the model; and, with --train, the wall time of training on the whole train split.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import resource
import tempfile
import time
from pathlib import Path

from bench.common import load_corpus, percentile, rss_kib, table
from gateway.config import PROJECT_ROOT
from gateway.message import ParsedMessage
from gateway.ml.features import extract
from gateway.ml.model import current_model_dir, load_model


def main(train_too: bool) -> None:
    corpus = load_corpus()
    test = [raw for path, raw in corpus if int(hashlib.md5(path.encode()).hexdigest(), 16) % 5 == 0]  # noqa: S324
    gc.collect()
    before = _rss()
    model = load_model(current_model_dir(PROJECT_ROOT / "models"))
    gc.collect()
    after = _rss()
    parse_ms, feature_ms, predict_ms, total_ms = [], [], [], []
    for raw in test[:50]:  # warm-up
        model.probability(extract(ParsedMessage.parse(raw)))
    for raw in test:
        t0 = time.perf_counter()
        message = ParsedMessage.parse(raw)
        t1 = time.perf_counter()
        features = extract(message)
        t2 = time.perf_counter()
        model.probability(features)
        t3 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        feature_ms.append((t2 - t1) * 1000)
        predict_ms.append((t3 - t2) * 1000)
        total_ms.append((t3 - t1) * 1000)
    sizes = sorted(len(r) for r in test)
    median = sizes[len(sizes) // 2] / 1024
    print(f"model {model.id}; {len(test)} test messages, median size {median:.1f} KiB")
    rows = [
        [name, percentile(v, 50), percentile(v, 95), percentile(v, 99), max(v)]
        for name, v in (("parse (once per message, shared)", parse_ms), ("features", feature_ms),
                        ("prediction", predict_ms), ("features + prediction", total_ms))
    ]  # fmt: skip
    print(table(["step", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows))
    print(f"process memory: {before / 1024:.0f} MiB before loading the model, "
          f"{after / 1024:.0f} MiB after ({(after - before) / 1024:.0f} MiB for the model); "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # fmt: skip
    if train_too:
        from training import dataset as datasets
        from training.train import train

        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "sa.jsonl.gz"
            records = [r for r in datasets.from_corpus(PROJECT_ROOT.parent / "shared" / "corpora" /
                                                      "spamassassin-public.tar.gz")]  # fmt: skip
            datasets.write(datasets.assign_split(records, "md5", 0.2, 0), data, {})
            started = time.perf_counter()
            train(data, Path(tmp) / "models", 1.0, 0.001)
            seconds = time.perf_counter() - started
            print(f"training on the train split (dataset already built): {seconds:.1f} s")


def _rss() -> int:
    import os

    return rss_kib(os.getpid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", action="store_true", help="also time a full training")
    main(parser.parse_args().train)
