"""Several worker processes sharing one listening socket, one parent minding them.

The parent binds the socket, forks the workers before any of them opens the store, closes
its own copy of the socket (so that when the workers stop listening, connections are
refused rather than left waiting in a backlog nobody reads), forwards
SIGTERM, SIGINT and SIGHUP to every worker, writes the pid file, and exits when all have
drained. A worker that dies unexpectedly is logged; the others keep serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from gateway.config import Settings

log = logging.getLogger(__name__)


def run_workers(
    count: int, work: Callable[[int], None], settings: Settings, listener: socket.socket
) -> int:
    """Fork ``count`` workers running ``work(index)``; return when they have all exited."""
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            status = 0
            try:
                work(index)
            except Exception:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        children[pid] = index
    listener.close()  # the workers hold it now
    log.info("started %d workers: %s", count, sorted(children))
    pid_file = settings.server.pid_file
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, -1)
        if os.waitstatus_to_exitcode(status) != 0:
            failures += 1
            log.error(
                "worker %d (pid %d) exited with %s", index, pid, os.waitstatus_to_exitcode(status)
            )
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
    return 1 if failures else 0
