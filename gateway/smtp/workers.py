"""Several worker processes sharing one listening socket, one parent minding them.

The parent binds the socket, forks the workers before any of them opens the store, forwards
SIGTERM, SIGINT and SIGHUP to every worker, writes the pid file, and exits when all have
drained. A worker that dies unexpectedly is logged and forked again (a few times a minute
at most); the others keep serving meanwhile. On SIGTERM the parent closes its copy of the
socket, so that once the workers stop listening connections are refused, not queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from gateway.config import Settings

log = logging.getLogger(__name__)


# A worker that dies is forked again, but at most this many times a minute: one that dies
# at start every time (a broken disk, say) is not restarted in a loop.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def run_workers(
    count: int, work: Callable[[int], None], settings: Settings, listener: socket.socket
) -> int:
    """Fork ``count`` workers running ``work(index)``; return when they have all exited."""
    children: dict[int, int] = {}
    stopping = False
    restarts: list[float] = []

    def spawn(index: int) -> None:
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
        if stopping:  # a SIGTERM that came during the fork did not reach this one
            os.kill(pid, signal.SIGTERM)

    for index in range(count):
        spawn(index)
    log.info("started %d workers: %s", count, sorted(children))
    pid_file = settings.server.pid_file
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            # The parent keeps the socket to fork replacements; once stopping, it lets go,
            # so that when the workers stop listening, connections are refused, not queued.
            listener.close()
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
        code = os.waitstatus_to_exitcode(status)
        if stopping or index < 0:
            if code != 0:
                failures += 1
                log.error("worker %d (pid %d) exited with %s", index, pid, code)
            continue
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW]
        if len(restarts) < MAX_RESTARTS:
            restarts.append(now)
            log.error("worker %d (pid %d) died (%s); starting it again", index, pid, code)
            spawn(index)
        else:
            failures += 1
            log.error(
                "worker %d (pid %d) died (%s) after %d restarts in %.0f s; not restarted",
                index,
                pid,
                code,
                MAX_RESTARTS,
                RESTART_WINDOW,
            )
    listener.close()
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
    return 1 if failures else 0
