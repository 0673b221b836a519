"""CPU per corpus message through the scan alone, and the same on another revision, in one run.

Run:  .venv/bin/python -m bench.scan [--messages 600] [--rounds 3] [--against REV]

What the SMTP benchmarks (bench.peers) cannot say on a shared machine whose speed drifts
between runs: whether a change made the scan itself cheaper or dearer. Each round scans the
same corpus messages (CRLF, as received) through ``Pipeline.scan`` with the checks that need
no server (protocol, headers, content, heuristics, bulk, the classifier) and the shipped
rules, in a fresh process, and reports the process's CPU time per message. With
``--against REV`` the rounds alternate between this tree and REV (checked out with ``git
worktree`` into a temporary directory), so both see the same machine. clamd and DNS are left
to bench.peers, which runs them for real.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import CORPUS, ROOT, table

CHILD = """
import asyncio, json, sys, time
root, count, models = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, root)
from bench.common import load_corpus
from gateway.config import Settings
from gateway.context import Envelope, ScanContext
from gateway.message import crlf_line_ends
from gateway.pipeline import Pipeline

messages = [crlf_line_ends(raw) for _, raw in load_corpus(limit=count)]
settings = Settings(
    checks={"antivirus": {"enabled": False}, "auth": {"enabled": False},
            "classifier": {"enabled": True, "models_dir": models}},
    server={"hostname": "mx.bench"},
)

def context(raw):
    return ScanContext(Envelope("0000000000000000.1", raw, "a@sender.test", ("b@example.test",)))

async def main():
    pipeline = Pipeline.from_settings(settings)
    for raw in messages[:50]:  # warm: caches, lazy imports
        await pipeline.scan(context(raw))
    started = time.process_time()
    for raw in messages:
        await pipeline.scan(context(raw))
    print(json.dumps({"ms": (time.process_time() - started) * 1000 / len(messages)}))

asyncio.run(main())
"""


def one_round(root: Path, count: int, models: Path) -> float:
    """ms of CPU per message in a fresh process importing the gateway from ``root``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(count), str(models)],
        cwd=root,
        env={**os.environ, "MAILMOAT_CORPUS": str(CORPUS)},  # the same messages for both
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scan under {root} failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["ms"])


def main(count: int, rounds: int, against: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailmoat-scan-"))
    trees = {"this tree": ROOT}
    try:
        if against:
            other = tmp / "other"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                            str(other), against], check=True)  # fmt: skip
            trees[against] = other
        results: dict[str, list[float]] = {name: [] for name in trees}
        for number in range(rounds):
            for name, root in trees.items():
                models = tmp / f"models-{name.replace(' ', '-')}-{number}"
                results[name].append(one_round(root, count, models))
                print(f"round {number + 1}: {name} {results[name][-1]:.3f} ms", file=sys.stderr)
        rows = [[name, *(f"{v:.3f}" for v in values), f"{statistics.median(values):.3f}"]
                for name, values in results.items()]  # fmt: skip
        print(f"{count} corpus messages per round; CPU ms per message through Pipeline.scan")
        print(table(["tree", *(f"round {n + 1}" for n in range(rounds)), "median"], rows))
        if against:
            ratio = statistics.median(results["this tree"]) / statistics.median(results[against])
            print(f"this tree / {against}: {ratio:.2f}")
    finally:
        if against:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tmp / "other")], check=False)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=600, help="corpus messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", help="a git revision to measure beside this tree")
    args = parser.parse_args()
    main(args.messages, args.rounds, args.against)
