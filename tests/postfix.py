"""Debian's real Postfix, started by the tests in a private directory on loopback ports.

One instance: its own config directory, queue and log file; smtpd on a free loopback port,
with Mailmoat as its milter (or not), relaying everything to the test's SMTP sink. Started
with `postfix -c DIR start` (root: CI runs as root) and stopped with `postfix -c DIR stop`.
Needs the `postfix` package (.ci/run installs it); tests skip with the reason when it is
missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DAEMONS = Path("/usr/lib/postfix/sbin")

# Only the services this test instance needs, none chrooted (the queue is in a tmp dir).
MASTER_CF = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


SNIPPETS = Path(__file__).resolve().parents[1] / "config" / "postfix"
# The ports the shipped snippets name: Mailmoat's SMTP front, its milter, the re-injection.
DOCS_PORTS = (10025, 11332, 10026)


def snippet(mode: str, port: int, ports: dict[int, int]) -> tuple[dict[str, str], str]:
    """config/postfix/<mode>.{main,master}.cf as this test instance runs them.

    The only changes: the documented ports become the test's (``ports``), the public
    "smtp inet" service listens on 127.0.0.1:``port``, and nothing is chrooted (the queue
    is in a temporary directory). Everything else is the text the docs tell operators to use.
    """
    main: dict[str, str] = {}
    master = ""
    for kind in ("main", "master"):
        path = SNIPPETS / f"{mode}.{kind}.cf"
        if not path.exists():
            continue
        text = path.read_text()
        for documented, actual in ports.items():
            text = re.sub(rf"\b{documented}\b", str(actual), text)
        if kind == "main":
            for line in text.splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    main[key.strip()] = value.strip()
            continue
        lines = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            fields = line.split()
            if not line[0].isspace() and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{port}"
                fields[4] = "n"  # not chrooted
                line = " ".join(fields)
            lines.append(line)
        master = "\n".join(lines) + "\n"
    if not master.startswith(f"127.0.0.1:{port} "):
        master = f"127.0.0.1:{port} inet n - n - - smtpd\n" + master
    return main, master


def available() -> bool:
    """Debian's postfix is installed (and we are root, as `postfix start` needs)."""
    import os

    return Path(POSTFIX).exists() and (DAEMONS / "smtpd").exists() and os.geteuid() == 0


class PostfixInstance:
    """A private Postfix: ``start()``, ``log()``, ``queue()``, ``stop()``."""

    def __init__(self, port: int, relay_port: int, extra: dict[str, str], master: str = "") -> None:
        # Not under pytest's tmp_path: that is 0700, and Postfix's daemons run as postfix.
        root = Path(tempfile.mkdtemp(prefix="mailmoat-postfix-", dir="/var/tmp"))
        root.chmod(0o755)
        self.root = root
        self.port = port
        # The inet services (the public smtpd first); the default: a plain smtpd on ``port``.
        self.master = master or f"127.0.0.1:{port} inet n - n - - smtpd\n"
        self.config = root / "etc"
        self.queue_dir = root / "queue"
        self.logfile = root / "maillog"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(root / "data"),
            "command_directory": "/usr/sbin",
            "daemon_directory": str(DAEMONS),
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mta.test",
            "mydomain": "test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "maillog_file": str(self.logfile),
            "maillog_file_prefixes": str(root),
            "smtputf8_enable": "no",
            "biff": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "message_size_limit": str(30 * 1024 * 1024),
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
            "smtpd_client_connection_rate_limit": "0",
            "default_destination_concurrency_limit": "50",
            "qmgr_message_active_limit": "20000",
            **extra,
        }
        self.settings = settings

    def start(self) -> PostfixInstance:
        for folder in (self.config, self.queue_dir, self.root / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        main = "\n".join(f"{k} = {v}" for k, v in self.settings.items()) + "\n"
        (self.config / "main.cf").write_text(main)
        (self.config / "master.cf").write_text(self.master + MASTER_CF)
        shutil.chown(self.root / "data", "postfix")
        result = self._postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stdout}{result.stderr}")
        self._wait_for_port()
        return self

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def _wait_for_port(self, timeout: float = 20.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        """Everything Postfix logged so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def queue(self) -> str:
        """`postqueue -p`: what waits in the queue (hold included)."""
        return subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.config), "-p"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout

    def stop(self) -> None:
        self._postfix("stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
