"""One worker's life: its fronts (SMTP proxy, milter), metrics, reload on SIGHUP, drain on stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

from gateway.config import parse_hostport
from gateway.metrics import serve_metrics
from gateway.milter.server import MilterServer
from gateway.service import Gateway
from gateway.smtp.limits import ConnectionCounts
from gateway.smtp.server import SmtpServer
from gateway.smtp.workers import early_stop

log = logging.getLogger(__name__)


async def serve(
    gateway: Gateway,
    ready: asyncio.Event | None = None,
    worker: int = 0,
    sock: socket.socket | None = None,
    counts: ConnectionCounts | None = None,
    milter_sock: socket.socket | None = None,
) -> None:
    """Run until SIGTERM or SIGINT (drain, then stop); SIGHUP reloads the pipeline.

    The SMTP front runs when ``[server] listen`` is set, the milter front when
    ``[milter] listen`` is; both share this worker's gateway (pipeline, store, metrics).
    """
    settings = gateway.settings
    # Signals first: a SIGTERM from now on drains; one that came while this worker was
    # starting (workers.early_stop) stops it before it takes a connection.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = loop.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if early_stop.is_set():
        stop.set()
    sessions_task = None
    smtp = SmtpServer(gateway, counts) if settings.server.listen else None
    milter = MilterServer(gateway) if settings.milter.listen else None
    if smtp is not None:
        await smtp.start(sock)
        sessions_task = gateway.metrics.track_sessions(lambda: len(smtp.state.protocols))
    if milter is not None:
        await milter.start(milter_sock)
    metrics_server = None
    # With several workers the first serves the metrics port (its own counters).
    if settings.server.metrics_listen and worker == 0:
        host, port = parse_hostport(settings.server.metrics_listen)
        metrics_server = await serve_metrics(gateway.metrics, gateway.readiness, host, port)
    pid_file = settings.server.pid_file if worker == 0 else None
    if pid_file is not None and settings.server.worker_count == 1:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down: draining sessions")
        grace = settings.server.shutdown_grace
        await asyncio.gather(
            *([smtp.drain()] if smtp is not None else []),
            *([milter.drain(grace)] if milter is not None else []),
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            metrics_server.close()
        if sessions_task is not None:
            sessions_task.cancel()
        await gateway.aclose()
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
        log.info("stopped")
