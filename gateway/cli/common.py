"""What the commands share: settings from --config, the store, times, message files."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Settings, load_settings
from gateway.message import crlf_line_ends
from gateway.store import Store, open_store

# What add_parsers extends (argparse gives it no public name; generic for mypy only).
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def setup_logging(level: str, events_to_stderr: bool) -> None:
    """Diagnostics to stderr; the events logger only for serve (its journal)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not events_to_stderr:
        logging.getLogger("gateway.events").setLevel(logging.WARNING)
    # aiosmtpd logs every command line at INFO under "mail.log"; our events say what matters.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings of --config (or the embedded defaults)."""
    return load_settings(args.config)


def store_of(args: argparse.Namespace) -> Store:
    """The event store the settings name."""
    return open_store(settings_of(args).store)


def fmt_time(ts: float) -> str:
    """A Unix time as UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iter_message_files(paths: Sequence[str]) -> Iterator[Path]:
    """Files as given, and every file under given directories (sorted, recursive)."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for file in sorted(files):
                    yield Path(root) / file
        else:
            yield path


def read_message(path: Path) -> bytes:
    """Read a message file as it would arrive by SMTP.

    A leading mbox 'From ' line is dropped, and a file with Unix line ends only (an
    ordinary .eml) gets CRLFs, as an MTA would send it: otherwise every file would score
    PROTO_BARE_LF. A file with CRLFs keeps its bytes, bare LFs and all.
    """
    data = path.read_bytes()
    if data.startswith(b"From "):
        _, _, data = data.partition(b"\n")
    return crlf_line_ends(data)


def ask_to_reload(settings: Settings, what: str) -> int:
    """SIGHUP to the gateway named by the pid file; 1 when none is running."""
    import signal

    pid_file = settings.server.pid_file
    try:
        pid = int(pid_file.read_text().strip()) if pid_file else 0
    except (OSError, ValueError):
        pid = 0
    if pid <= 0:
        print(f"mailmoat: no running gateway (pid file {pid_file})", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"mailmoat: no gateway with pid {pid} (stale pid file {pid_file})", file=sys.stderr)
        return 1
    print(f"{what}; asked the gateway (pid {pid}) to reload")
    return 0
