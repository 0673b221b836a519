"""Learning from what users do: Junk moves in a Maildir become labels.

A message that appears in the user's Junk folder is spam in their eyes; one that leaves
Junk for another folder was ham after all. Each is matched to its event by Message-ID and
labelled with the user as author (source "user"); a message this gateway never saw is
kept as a labelled sample. What was seen is remembered in a small state file, so each move
counts once; ``watch`` repeats the pass every ``interval`` seconds.
"""

from __future__ import annotations

import json
import mailbox
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.context import new_connection_id
from gateway.events import Retained, SecurityEvent
from gateway.message import ParsedMessage
from gateway.ml.features import extract
from gateway.store import Store


def _folders(root: Path) -> Iterator[tuple[str, Path]]:
    """(name, Maildir) for the INBOX and every Maildir++ subfolder (.Junk, .Archive...)."""
    if (root / "cur").is_dir():
        yield "INBOX", root
    for sub in sorted(root.glob(".*")):
        if (sub / "cur").is_dir():
            yield sub.name[1:], sub


def _message_ids(folder: Path) -> dict[str, bytes]:
    box = mailbox.Maildir(folder, create=False)
    found: dict[str, bytes] = {}
    for key in box.iterkeys():
        raw = bytes(box.get_bytes(key))
        message_id = ParsedMessage.parse(raw).message_id
        if message_id:
            found[message_id] = raw
    return found


def learn_pass(store: Store, root: Path, user: str, junk: str, state_file: Path) -> dict[str, int]:
    """One look at the Maildir: label what moved into or out of Junk since the last look."""
    state = json.loads(state_file.read_text()) if state_file.exists() else {"junk": []}
    known_junk = set(state["junk"])
    in_junk: dict[str, bytes] = {}
    elsewhere: dict[str, bytes] = {}
    for name, folder in _folders(root):
        (in_junk if name.lower() == junk.lower() else elsewhere).update(_message_ids(folder))
    counts = {"spam": 0, "ham": 0, "samples": 0}
    for message_id, raw in in_junk.items():
        if message_id not in known_junk:
            counts["samples"] += _label(store, message_id, raw, "spam", user)
            counts["spam"] += 1
    for message_id in known_junk - set(in_junk):
        if message_id in elsewhere:  # moved out of Junk, not deleted
            counts["samples"] += _label(store, message_id, elsewhere[message_id], "ham", user)
            counts["ham"] += 1
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"junk": sorted(in_junk)}))
    tmp.replace(state_file)
    return counts


def _label(store: Store, message_id: str, raw: bytes, label: str, user: str) -> int:
    """Label the event with this Message-ID; keep an unknown message as a sample (returns 1)."""
    matches = store.find_by_message_id(message_id)
    if matches:
        store.add_label(matches[0], label, "user", user)
        return 0
    message = ParsedMessage.parse(raw)
    event = SecurityEvent(
        id=f"{new_connection_id()}.1", kind="sample", message_id=message_id[:500],
        subject=message.subject[:500], size=len(raw), action="sample",
        details={"source": "user folder", "user": user},
    )  # fmt: skip
    store.add(event, Retained(raw, extract(message).to_dict(), None))
    store.add_label(event.id, label, "user", user)
    return 1


def watch(
    store: Store, root: Path, user: str, junk: str, state_file: Path, interval: float,
    report: Callable[[dict[str, int]], None], passes: int | None = None,
) -> None:  # fmt: skip
    """learn_pass every ``interval`` seconds (``passes`` times, or until interrupted)."""
    done = 0
    while passes is None or done < passes:
        counts = learn_pass(store, root, user, junk, state_file)
        if any(counts.values()):
            report(counts)
        done += 1
        if passes is None or done < passes:
            time.sleep(interval)
