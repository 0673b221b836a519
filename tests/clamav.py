"""A real clamd (Debian's clamav-daemon) run by the tests with the project's signatures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGNATURES = ROOT / "config" / "clamav"
CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
HASH_SAMPLE = b"Mailmoat test sample: harmless bytes that ClamAV matches by hash.\n" * 16


class ClamdProcess:
    """clamd in the foreground, in its own directory; start, stop, kill, pause, resume."""

    def __init__(self, directory: Path, stream_max: str = "4M", extra: str = "") -> None:
        self.directory = directory
        self.socket = directory / "clamd.sock"
        self.process: subprocess.Popen[bytes] | None = None
        db = directory / "db"
        db.mkdir(parents=True, exist_ok=True)
        for name in ("mailmoat.ndb", "mailmoat.hdb"):
            shutil.copy(SIGNATURES / name, db / name)
        (directory / "clamd.conf").write_text(
            f"LocalSocket {self.socket}\nFixStaleSocket yes\nDatabaseDirectory {db}\n"
            f"Foreground yes\nLogFile {directory / 'clamd.log'}\nStreamMaxLength {stream_max}\n"
            "MaxThreads 4\n" + extra
        )

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self, timeout: float = 60.0) -> ClamdProcess:
        self.process = subprocess.Popen(
            [CLAMD, "-c", str(self.directory / "clamd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "clamd.log").read_text(errors="replace")
                raise RuntimeError(f"clamd exited with {self.process.returncode}:\n{log[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError("clamd did not answer PING in time")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the socket file stays behind, refusing connections."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: clamd accepts connections (the kernel does) but never answers."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
