"""``mailmoat serve``: the workers, their shared sockets and the parent's last good pipeline."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from gateway.cli.common import Subparsers, ask_to_reload, settings_of
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline
from gateway.services import Services
from gateway.smtp.limits import ConnectionCounts

log = logging.getLogger(__name__)


def add_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run the gateway (SMTP proxy, milter)")
    serve.set_defaults(func=cmd_serve)
    reload = sub.add_parser(
        "reload", parents=[common], help="check the config, then make the gateway reload it"
    )
    reload.set_defaults(func=cmd_reload)


def cmd_reload(args: argparse.Namespace) -> int:
    """What `systemctl reload` runs: refuse a config the gateway would refuse, then SIGHUP."""
    settings = settings_of(args)
    Pipeline.from_settings(settings)  # a ConfigError here is one line and exit 2
    return ask_to_reload(settings, "config valid")


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    config_path = Path(args.config) if args.config else None
    workers = settings.server.worker_count
    if workers == 1:
        _serve_one(settings, config_path, 0)
        return 0
    # Every worker's metrics in files the one answering /metrics adds up (gateway.metrics).
    # Set before anything here imports prometheus_client (gateway.service does): it picks
    # its value class once, at import. A fresh directory each start.
    metrics_dir = Path(tempfile.mkdtemp(prefix="mailmoat-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from gateway.milter.server import milter_socket
    from gateway.smtp.server import listening_socket
    from gateway.smtp.workers import run_workers

    sock = milter_sock = None
    if settings.server.listen:
        sock = listening_socket(settings.server)
    if settings.milter.listen:
        milter_sock = milter_socket(settings.milter)
    # The last good pipeline, kept here: a worker that dies is forked again from it, so a
    # model or rule file broken on disk since the start cannot keep it from coming back.
    services = Services()
    current_settings, current_pipeline = settings, Pipeline.from_settings(settings, services)

    def reload() -> None:
        nonlocal current_settings, current_pipeline
        try:
            new_settings = load_settings(config_path) if config_path else settings
            current_pipeline = Pipeline.from_settings(new_settings, services)
            current_settings = new_settings
        except (ConfigError, OSError, UnicodeError) as exc:
            log.error("reload refused in the parent, new workers keep the last good: %s", exc)

    counts = ConnectionCounts(workers)

    def forget(index: int, pid: int) -> None:
        counts.clear(index)
        from prometheus_client import multiprocess

        # Its live gauges go with it; its counters stay (they counted real messages).
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    def work(worker: int) -> None:
        counts.worker = worker
        _serve_one(
            current_settings, config_path, worker, sock, current_pipeline, counts, milter_sock,
            services,
        )  # fmt: skip

    listeners = [s for s in (sock, milter_sock) if s is not None]
    try:
        return run_workers(workers, work, settings, listeners, reload, forget)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_one(
    settings: Settings,
    config_path: Path | None,
    worker: int,
    sock: socket.socket | None = None,
    pipeline: Pipeline | None = None,
    counts: ConnectionCounts | None = None,
    milter_sock: socket.socket | None = None,
    services: Services | None = None,
) -> None:
    from gateway.serve import serve
    from gateway.service import Gateway

    gateway = Gateway(settings, config_path, pipeline, services)
    # What is loaded now (the model: millions of objects) lives as long as the process: out
    # of the collector's sight, a full collection takes 8 ms instead of 90 ms, during which
    # every session of this worker waits.
    gc.collect()
    gc.freeze()
    try:
        import uvloop  # a faster event loop where installed (docs/performance.md)

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(gateway, worker=worker, sock=sock, counts=counts, milter_sock=milter_sock))
