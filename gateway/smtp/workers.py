"""Several worker processes sharing one listening socket, one parent minding them.

The parent binds the socket, forks the workers before any of them opens the store, forwards
SIGTERM, SIGINT and SIGHUP to every worker, writes the pid file, and exits when all have
drained. A worker that dies unexpectedly is logged and forked again, forever, after a delay
that doubles with each death in a row (0.5 s up to 30 s) and starts again from 0.5 s once a
worker has lived a minute; the others keep serving meanwhile. The parent holds the last good
pipeline (checks, model, rules) in memory and a new worker is forked from it, so a model or
rule file broken on disk cannot keep workers from starting; SIGHUP reloads it (``reload``),
keeping the old one when the new one does not load. On SIGTERM the parent closes its copy
of the socket, so that once the workers stop listening connections are refused, not queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence

from gateway.config import Settings

log = logging.getLogger(__name__)
# Set when a worker is told to stop before serve() handles signals itself.
early_stop = threading.Event()


# A worker that dies is forked again after a delay: FIRST_DELAY, doubled for each death in a
# row up to MAX_DELAY, so one that dies at start every time (a broken disk, say) is retried
# without spinning. A worker that lived HEALTHY_AFTER seconds starts the count again.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0


def restart_delay(deaths_in_a_row: int) -> float:
    """Seconds to wait before forking a worker that died ``deaths_in_a_row`` times."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2.0 ** max(0, deaths_in_a_row - 1)))


def run_workers(
    count: int,
    work: Callable[[int], None],
    settings: Settings,
    listeners: Sequence[socket.socket],
    reload: Callable[[], None] | None = None,
    forget: Callable[[int, int], None] | None = None,
) -> int:
    """Fork ``count`` workers running ``work(index)``; return when they have all exited.

    ``reload`` runs in the parent on SIGHUP, after the signal went to the workers;
    ``forget(index, pid)`` when a worker died, to clear what it held in shared memory.
    """
    children: dict[int, int] = {}
    started: dict[int, float] = {}  # index -> when its worker was forked
    deaths: dict[int, int] = {}  # index -> deaths in a row
    pending: dict[int, float] = {}  # index -> when to fork it again
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            # Until serve() takes over the signals: a stop is remembered (serve() then stops
            # at once, cleanly), not a death by SIGTERM that the parent would count.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: early_stop.set())
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
        started[index] = time.monotonic()
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
            for listener in listeners:
                listener.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signum)
        if stopping:
            pending.clear()
        elif signum == signal.SIGHUP and reload is not None:
            reload()  # what the next forked worker starts from

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    failures = 0
    while children or pending:
        for index, due in sorted(pending.items(), key=lambda kv: kv[1]):
            if due <= time.monotonic() and not stopping:
                del pending[index]
                spawn(index)
        reaped = _reap(min(pending.values(), default=None))
        if reaped is None:
            continue
        pid, status = reaped
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if stopping or index < 0:
            if code != 0:
                failures += 1
                log.error("worker %d (pid %d) exited with %s", index, pid, code)
            continue
        if forget is not None:
            forget(index, pid)
        now = time.monotonic()
        lived = now - started.get(index, now)
        deaths[index] = 1 if lived >= HEALTHY_AFTER else deaths.get(index, 0) + 1
        delay = restart_delay(deaths[index])
        pending[index] = now + delay
        log.error(
            "worker %d (pid %d) died (%s) after %.1f s; starting it again in %.1f s "
            "(%d deaths in a row)",
            index, pid, code, lived, delay, deaths[index],
        )  # fmt: skip
    for listener in listeners:
        listener.close()
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
    return 1 if failures else 0


def _reap(due: float | None) -> tuple[int, int] | None:
    """Wait for a worker to exit: until one does, or until ``due`` (monotonic) if given."""
    if due is None:
        try:
            return os.wait()
        except ChildProcessError:
            return None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid:
            return pid, status
        remaining = due - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(0.05, remaining))
