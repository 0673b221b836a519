"""Prometheus metrics, liveness and readiness of the gateway, on [server] metrics_listen.

A deliberately tiny HTTP/1.0 responder (three GET paths) on its own port: no web framework
inside the SMTP process, and nothing but loopback by default.

With several workers, each keeps its counters in prometheus-client's multiprocess files
(PROMETHEUS_MULTIPROC_DIR, set by ``mailmoat serve`` before anything imports the client) and
/metrics adds them up: the whole node's figures, whichever worker answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.errors import ConfigError
from gateway.pipeline import ScanResult
from gateway.types import Status

log = logging.getLogger(__name__)


class Metrics:
    """The gateway's counters, histograms and gauges."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, str], Any] = {}
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # What /metrics shows: this process's registry, or every worker's files added up.
        self.exposed = self.registry
        if self.multiprocess:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)  # type: ignore[no-untyped-call]
        self.messages = Counter("mailmoat_messages", "Messages decided, by action",
                                ["action"], registry=self.registry)  # fmt: skip
        self.symbols = Counter("mailmoat_symbols", "Symbols found, by name", ["symbol"],
                               registry=self.registry)  # fmt: skip
        self.check_seconds = Histogram(
            "mailmoat_check_seconds", "Time per check (parse and rules included)", ["check"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )  # fmt: skip
        self.check_failures = Counter("mailmoat_check_failures", "Checks that failed (ERROR)",
                                      ["check"], registry=self.registry)  # fmt: skip
        self.store_failures = Counter("mailmoat_store_failures",
                                      "Writes the store refused (disk full, read-only), by what",
                                      ["what"], registry=self.registry)  # fmt: skip
        self.temperrors = Counter("mailmoat_temperrors", "Temporary errors (e.g. DNS), by symbol",
                                  ["symbol"], registry=self.registry)  # fmt: skip
        # Gauges of live workers only, added up (sessions) or the highest (info: value 1).
        self.sessions = Gauge("mailmoat_sessions_in_flight", "SMTP sessions connected",
                              registry=self.registry, multiprocess_mode="livesum")  # fmt: skip
        self.model = Gauge("mailmoat_model_info", "The model in service (value 1)", ["model"],
                           registry=self.registry, multiprocess_mode="livemax")  # fmt: skip
        self.rules = Gauge("mailmoat_rules_info", "The rule set in service (value 1)", ["version"],
                           registry=self.registry, multiprocess_mode="livemax")  # fmt: skip
        # Set at each scrape from the readiness checks (docs/operations.md, alerts).
        self.up = Gauge("mailmoat_up", "1 when a part works (clamd, backend, store, rules, "
                        "model), 0 when not", ["part"], registry=self.registry,
                        multiprocess_mode="livemin")  # fmt: skip
        self.signatures = Gauge("mailmoat_antivirus_signatures_timestamp_seconds",
                                "When clamd's signature database was built (VERSION)",
                                registry=self.registry, multiprocess_mode="livemin")  # fmt: skip
        self.events_pending = Gauge(
            "mailmoat_events_pending", "Events waiting to be committed",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ratelimited = Counter("mailmoat_ratelimited", "Steps deferred by a rate limit "
                                   "(4.7.28)", ["limit"], registry=self.registry)  # fmt: skip
        self.greylisted = Counter("mailmoat_greylisted", "Messages deferred by greylisting",
                                  registry=self.registry)  # fmt: skip
        self.shared_fallbacks = Counter(
            "mailmoat_shared_state_fallbacks", "Rate-limit and greylisting operations counted on "
            "this node because Redis failed", ["op"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter("mailmoat_reloads", "Reloads of config, rules and model, by result",
                               ["result"], registry=self.registry)  # fmt: skip
        # Served at 0 from the start: increase() in an alert sees the first failure only if
        # a sample before it exists (a series born at 1 has no increase).
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for what in ("events", "quarantine"):
            self.store_failures.labels(what)

    def shared_fallbacks_of(self, op: str) -> None:
        """One operation counted on this node instead of in Redis."""
        self.shared_fallbacks.labels(op).inc()

    def observe(self, result: ScanResult) -> None:
        """Count one decided message."""
        verdict = result.verdict
        self.messages.labels(verdict.action.value).inc()
        for symbol in verdict.symbols:
            self._child(self.symbols, symbol.name).inc()
            if symbol.status is Status.ERROR:
                self.check_failures.labels(symbol.check).inc()
            elif symbol.status is Status.TEMPERROR:
                self.temperrors.labels(symbol.name).inc()
        for check, ms in result.timings_ms.items():
            self._child(self.check_seconds, check).observe(ms / 1000)

    def _child(self, metric: Counter | Histogram, label: str) -> Any:
        """metric.labels(label), kept: prometheus_client validates and locks on every call
        (about 2 us), and a message counts a dozen symbols and timings."""
        key = (id(metric), label)  # the metrics are this object's own: their ids stay
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(label)
        return child

    def track_sessions(self, count: Callable[[], int]) -> asyncio.Task[None] | None:
        """Keep the sessions gauge current: read at scrape time, or every second when the
        workers' files are added up (a function cannot be read across processes)."""
        if not self.multiprocess:
            self.sessions.set_function(count)
            return None

        async def update() -> None:
            while True:
                self.sessions.set(count())
                await asyncio.sleep(1.0)

        return asyncio.get_running_loop().create_task(update())

    def versions(self, versions: dict[str, str]) -> None:
        """Expose the model and rule set in service (cleared and set again on reload)."""
        for gauge in (self.model, self.rules):
            for metric in gauge.collect():  # 0 first: a worker's file keeps what was set
                for sample in metric.samples:
                    gauge.labels(*sample.labels.values()).set(0)
        if not self.multiprocess:  # there, the 0s above stand (prometheus-client cannot clear)
            self.model.clear()
            self.rules.clear()
        if "model" in versions:
            self.model.labels(versions["model"]).set(1)
        if "rules" in versions:
            self.rules.labels(versions["rules"]).set(1)


Readiness = Callable[[], Awaitable[dict[str, str]]]
PARTS = ("clamd", "backend", "store", "rules", "model")


async def serve_metrics(metrics: Metrics, ready: Readiness, host: str, port: int) -> asyncio.Server:
    """Answer GET /metrics, /healthz, /readyz; anything else is 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.split()
            path = parts[1].decode("ascii", "replace") if len(parts) >= 2 else ""
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            if parts[:1] == [b"GET"] and path == "/metrics":
                problems = await ready()  # what mailmoat_up says, as of this scrape
                for part in PARTS:
                    metrics.up.labels(part).set(0 if part in problems else 1)
                status, ctype, body = (
                    "200 OK",
                    CONTENT_TYPE_LATEST,
                    generate_latest(metrics.exposed),
                )
            elif parts[:1] == [b"GET"] and path == "/healthz":
                status, body = "200 OK", b"ok\n"
            elif parts[:1] == [b"GET"] and path == "/readyz":
                problems = await ready()
                lines = "".join(f"{k}: {v}\n" for k, v in sorted(problems.items()))
                status = "503 Service Unavailable" if problems else "200 OK"
                body = (lines or "ready\n").encode()
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        raise ConfigError(f"server.metrics_listen: cannot listen on {host}:{port}: {exc}") from exc
    log.info("metrics, healthz and readyz on %s:%s", host, port)
    return server
