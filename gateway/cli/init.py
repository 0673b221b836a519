"""``mailmoat init``: an editable config, the rules and the model registry for an install.

A wheel carries the defaults read-only under ``<prefix>/share/mailmoat``; a site edits its
config, scores and rules under ``--prefix`` (FHS: /etc/mailmoat) and keeps state (the model
registry that promote and rollback change, events, quarantine, maildirs) under ``--state``
(/var/lib/mailmoat), never in the installed package or a source tree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.cli.common import Subparsers
from gateway.config import SHIPPED


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """This group's sub-commands, each bound to its function."""
    init = sub.add_parser(
        "init", parents=[common], help="write a config, rules and the model registry to edit"
    )
    init.add_argument("--prefix", type=Path, default=Path("/etc/mailmoat"), help="config")
    init.add_argument("--state", type=Path, default=Path("/var/lib/mailmoat"), help="state")
    init.add_argument("--force", action="store_true", help="overwrite an existing config")
    init.set_defaults(func=cmd_init)


CONFIG = """\
# Mailmoat, written by `mailmoat init` on {date}.
# Every key, with its default and why: mailmoat.example.toml beside this file.
# Check after editing: mailmoat config check --config {prefix}/mailmoat.toml

[server]
listen = "127.0.0.1:10025"
# The recipient domains you receive mail for (required with an SMTP or LMTP backend).
accept_domains = []
pid_file = "{state}/mailmoat.pid"

[milter]
# "127.0.0.1:11332" to serve Postfix's smtpd_milters (docs/deployment.md).
listen = ""

[backend]
kind = "maildir"
path = "{state}/maildir"

[store]
path = "{state}/store"

[policy]
scores_file = "{prefix}/scores.toml"

[rules]
paths = ["{prefix}/rules"]

[checks.classifier]
models_dir = "{state}/models"

[training]
models_dir = "{state}/models"
datasets_dir = "{state}/datasets"
reports_dir = "{state}/reports"

[antivirus]
# Debian's clamav-daemon.
address = "unix:/run/clamav/clamd.ctl"

[web]
secret_file = "{state}/web-secret"
"""


def cmd_init(args: argparse.Namespace) -> int:
    """Write what is missing; never overwrite the site's rules, scores or models."""
    prefix, state = args.prefix.resolve(), args.state.resolve()
    config = prefix / "mailmoat.toml"
    if config.exists() and not args.force:
        print(f"mailmoat: {config} exists (use --force to write it again)", file=sys.stderr)
        return 1
    for folder in (prefix, state, state / "models"):
        folder.mkdir(parents=True, exist_ok=True)
    written = []

    def copy(source: Path, target: Path) -> None:
        if target.exists():
            return  # the site's own copy, edited or promoted since: kept as it is
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        written.append(str(target))

    copy(SHIPPED / "config" / "scores.toml", prefix / "scores.toml")
    # The hand-set weights the shipped scores were learned from (mailmoat model scores --base).
    copy(SHIPPED / "config" / "scores-hand.toml", prefix / "scores-hand.toml")
    copy(SHIPPED / "config" / "mailmoat.example.toml", prefix / "mailmoat.example.toml")
    copy(SHIPPED / "config" / "postfix", prefix / "postfix")
    copy(SHIPPED / "rules", prefix / "rules")
    # The model registry: every shipped model, and CURRENT only on a first install (an
    # upgrade brings new models beside the site's, it does not promote them).
    for model in sorted((SHIPPED / "models").iterdir()):
        if model.is_dir():
            copy(model, state / "models" / model.name)
    copy(SHIPPED / "models" / "CURRENT", state / "models" / "CURRENT")
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    config.write_text(CONFIG.format(date=date, prefix=prefix, state=state))
    written.append(str(config))
    for path in written:
        print(f"wrote {path}")
    print(f"next: edit {config} (accept_domains, backend), then "
          f"mailmoat config check --config {config}")  # fmt: skip
    return 0
