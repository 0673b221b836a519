"""Debian's real Dovecot LMTP server, started by the tests in a private directory.

Its own config (``dovecot -c FILE -F``), users in a passwd-file (bob and a "full" user
with a 1 KB quota), maildirs under the directory, LMTP on a loopback port and on a unix
socket. Needs dovecot-core and dovecot-lmtpd (.ci/run installs them) and root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USERS = ("bob@example.test", "carol@example.test", "full@example.test")


def available() -> bool:
    return Path(DOVECOT).exists() and Path("/usr/lib/dovecot/lmtp").exists() and os.geteuid() == 0


class DovecotInstance:
    """A private Dovecot: ``start()``, ``messages(user)``, ``log()``, ``stop()``."""

    def __init__(self, port: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailmoat-dovecot-", dir="/var/tmp"))
        self.root.chmod(0o755)
        self.port = port
        self.socket = self.root / "run" / "lmtp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DovecotInstance:
        mail = self.root / "mail"
        mail.mkdir()
        shutil.chown(mail, "nobody", "nogroup")
        lines = []
        for user in USERS:
            quota = "userdb_quota_rule=*:storage=1K" if user.startswith("full@") else ""
            lines.append(f"{user}::65534:65534::{mail}/{user.split('@')[0]}::{quota}")
        (self.root / "users").write_text("\n".join(lines) + "\n")
        (self.root / "dovecot.conf").write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {self.root}/users
}}
userdb {{
  driver = passwd-file
  args = {self.root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  mail_plugins = quota
}}
plugin {{
  quota = maildir:User quota
}}
""")
        with (self.root / "stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0 and self.socket.exists():
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def messages(self, user: str) -> list[bytes]:
        """What the user's INBOX holds (new and cur)."""
        box = self.root / "mail" / user / "Maildir"
        files = [f for sub in ("new", "cur") if (box / sub).is_dir() for f in (box / sub).iterdir()]
        return [f.read_bytes() for f in sorted(files)]

    def log(self) -> str:
        parts = [self.root / "dovecot.log", self.root / "stderr"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)
