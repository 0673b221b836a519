"""The gateway's parts in service (pipeline, backend, store, quarantine) and their reload."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway import __version__
from gateway.allows import SenderAllows
from gateway.clients.clamd import ClamdClient, ClamdError
from gateway.config import Settings, load_settings
from gateway.context import ScanContext, new_connection_id
from gateway.disposition import relabel
from gateway.errors import ConfigError, StoreBusy, StoreError, UnknownIdError
from gateway.events import (
    EventKind,
    EventRecorder,
    JsonLinesSink,
    Retained,
    SecurityEvent,
    event_log,
)
from gateway.greylist import Greylist
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.quarantine import Quarantine
from gateway.ratelimit import RateLimits
from gateway.relay import Backend, Reply, deliver, make_backend
from gateway.services import Services
from gateway.smtp.recipients import RecipientMap
from gateway.store import Store, open_store
from gateway.types import Action

log = logging.getLogger(__name__)

# Seconds between WAL checkpoints of the event store, off the commit path (events.Checkpointer).
CHECKPOINT_EVERY = 1.0
# Seconds between probes of an event store that failed (mail is deferred meanwhile).
STORE_PROBE_EVERY = 1.0


def signatures_time(version: str) -> float | None:
    """When clamd's database was built, from VERSION: 'ClamAV 1.0.7/27466/Tue Nov 26 09:34:21 2024'.

    None when the answer has no date (clamd without a loaded database says so).
    """
    parts = version.strip().split("/")
    if len(parts) < 3:
        return None
    try:
        built = datetime.strptime(" ".join(parts[2].split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return built.replace(tzinfo=UTC).timestamp()


def file_digest(path: Path) -> str:
    """Short sha256 of a file, used as a version label in events."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def recipient_map(settings: Settings) -> RecipientMap | None:
    """The configured recipient map, read now (a ConfigError names the bad line)."""
    path = settings.server.recipient_map
    return RecipientMap(path) if path is not None else None


class Gateway:
    """Everything a message needs after SMTP: build once, reload the pipeline on SIGHUP."""

    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        pipeline: Pipeline | None = None,
        services: Services | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.hostname = settings.server.identity
        # Built once, kept across reloads: the DNS cache, DMARC policies seen, clamd client.
        self.services = services or Services()
        # A worker forked by the parent starts from the parent's last good pipeline.
        self.pipeline = pipeline or Pipeline.from_settings(settings, self.services)
        self.versions = self._versions(self.pipeline)
        self.backend: Backend = make_backend(settings.backend, self.hostname)
        self.recipients = recipient_map(settings)
        self.metrics = Metrics()
        # Rate limits and greylisting count in Redis when configured (shared_state.py).
        self.shared = self.services.shared(settings.redis)
        self.shared.on_fallback = self.metrics.shared_fallbacks_of
        self.ratelimits = RateLimits(settings.ratelimit, self.shared)
        self.greylist = Greylist(settings.greylist, self.shared)
        self.store = open_store(settings.store, checkpoint_every=CHECKPOINT_EVERY)
        self.quarantine = Quarantine(settings.store.quarantine_dir, self.store)
        self.sender_allows = SenderAllows(self.store)
        jsonl = JsonLinesSink(settings.store.jsonl) if settings.store.jsonl else None
        self.recorder = EventRecorder(self.store, jsonl)
        self.committer = GroupCommitter(self.recorder)
        self.metrics.versions(self.versions)
        self.store_errors: dict[str, str] = {}  # what -> last failure, until a write succeeds
        self.store_probed = 0.0

    def _versions(self, pipeline: Pipeline) -> dict[str, str]:
        """What decided: code, scores, rule set and model versions (recorded in each event)."""
        versions = {
            "mailmoat": __version__,
            "scores": file_digest(self.settings.policy.scores_file),
        }
        if pipeline.rules is not None:
            versions["rules"] = pipeline.rules.version
        for check in pipeline.checks:
            model = getattr(check, "model", None)
            if model is not None and hasattr(model, "id"):
                versions["model"] = model.id
        return versions

    def retention(self, ctx: ScanContext, action: Action) -> Retained:
        """What to keep of a message for retraining (see [store] retain_*)."""
        cfg = self.settings.store
        raw = ctx.envelope.raw
        keep = action is Action.QUARANTINE or random.random() < cfg.retain_sample_rate  # noqa: S311
        keep_raw = keep and len(raw) <= cfg.retain_max_bytes
        expires = ctx.envelope.received_at + cfg.retain_days * 86400
        # The features outlive the raw, so a label stays trainable: for every message whose
        # features a check or rule read (classifier, heuristics, bulk...), else the ones kept.
        # With no such check on, extracting them for every message was a fifth of the
        # pass-through's CPU (docs/performance.md).
        features = ctx.features.to_dict() if keep or ctx.has_features else None
        return Retained(raw if keep_raw else None, features, expires)

    async def record(self, event: SecurityEvent, retained: Retained | None = None) -> bool:
        """Record an event (group-committed with others in flight); failures are logged.

        The caller waits for the commit, so the reply is sent after the event is stored, but
        concurrent sessions share one transaction instead of queueing for one each.
        """
        try:
            await self.committer.submit(event, retained)
        except StoreError as exc:
            # Nothing silent: the decision is in the process log in full. The recorder has
            # already written it to the events log if that is on; if not, it goes here.
            self.store_failed("events", exc)
            if event_log.isEnabledFor(logging.INFO):
                log.error(
                    "event %s could not be stored (%s); it is in the events log", event.id, exc
                )
            else:
                log.error(
                    "event %s could not be stored (%s); the event: %s",
                    event.id,
                    exc,
                    event.to_json(),
                )
            return False
        self.store_ok("events")
        return True

    async def store_answers(self) -> bool:
        """False while the event store is known to fail: probed at most once a second, so a
        store that comes back is used again by itself."""
        if "events" not in self.store_errors:
            return True
        now = time.monotonic()
        if now - self.store_probed < STORE_PROBE_EVERY:
            return False
        self.store_probed = now
        try:
            await asyncio.to_thread(self.store.ping)
        except StoreError as exc:
            self.store_failed("events", exc)
            log.error("the event store still fails (%s): mail is deferred", exc)
            return False
        log.warning("the event store answers again: mail flows")
        self.store_ok("events")
        return True

    def store_ok(self, what: str) -> None:
        """A write of ``what`` succeeded: /readyz stops reporting its last failure."""
        self.store_errors.pop(what, None)

    def store_failed(self, what: str, error: Exception) -> None:
        """Count a failed write ("events", "quarantine"); /readyz shows it until one succeeds."""
        self.store_errors[what] = str(error)
        self.metrics.store_failures.labels(what).inc()

    async def reload(self) -> bool:
        """Re-read the config file and rebuild the pipeline; keep the old one on any error."""
        event_id = f"{new_connection_id()}.1"
        try:
            settings = load_settings(self.config_path) if self.config_path else self.settings
            pipeline = Pipeline.from_settings(settings, self.services)
            same_map = settings.server.recipient_map == self.settings.server.recipient_map
            recipients = self.recipients if same_map else recipient_map(settings)
        except Exception as exc:
            # Whatever broke (a config error, an unreadable file, a bug in a loader), the
            # pipeline in service stays, and the refusal is an event, not a dead task.
            if not isinstance(exc, ConfigError):
                log.exception("reload failed unexpectedly")
            log.error("reload refused, keeping the pipeline in service: %s", exc)
            self.metrics.reloads.labels("failed").inc()
            await self.record(
                SecurityEvent(id=event_id, kind=EventKind.RELOAD_FAILED, reason=str(exc)[:2000])
            )
            return False
        old, self.pipeline = self.pipeline, pipeline
        self.settings, self.recipients = settings, recipients
        # New limits take effect now; a new [redis] takes a restart (counts stay where they are).
        self.ratelimits = RateLimits(settings.ratelimit, self.shared)
        self.greylist = Greylist(settings.greylist, self.shared)
        self.versions = self._versions(pipeline)
        self.metrics.versions(self.versions)
        # Sessions already scanning keep the old pipeline object until they finish.
        await old.aclose()
        log.info("reloaded: enabled checks %s", [c.name for c in pipeline.checks])
        self.metrics.reloads.labels("ok").inc()
        await self.record(
            SecurityEvent(id=event_id, kind=EventKind.RELOAD, versions=dict(self.versions))
        )
        return True

    async def readiness(self) -> dict[str, str]:
        """What keeps the gateway from serving well: {} when ready (for /readyz)."""
        problems: dict[str, str] = {}
        for check in self.pipeline.checks:
            client = getattr(check, "client", None)
            if isinstance(client, ClamdClient):
                try:
                    if not await client.ping():
                        problems["clamd"] = "no PONG"
                    built = signatures_time(await client.version())
                    if built is not None:
                        self.metrics.signatures.set(built)
                except ClamdError as exc:
                    problems["clamd"] = str(exc)
        self.metrics.events_pending.set(len(self.committer.pending))
        backend_problem = await self.backend.health()
        if backend_problem is not None:
            problems["backend"] = backend_problem
        # Redis down is not a reason to take the node out: it counts for itself (fail open).
        if self.shared.redis is not None:
            self.metrics.up.labels("redis").set(0 if await self.shared.problem() else 1)
        if self.store_errors:
            problems["store"] = "; ".join(f"{k}: {v}" for k, v in sorted(self.store_errors.items()))
        if self.settings.rules.enabled and self.pipeline.rules is None:
            problems["rules"] = "not loaded"
        enabled = {c.name for c in self.pipeline.checks}
        if "classifier" in enabled and "model" not in self.versions:
            problems["model"] = "not loaded"
        return problems

    async def release(self, message_id: str, actor: str = "cli") -> Reply:
        """Send a held message to the backend (see release_message)."""
        return await release_message(
            self.quarantine, self.store, self.backend, self.recorder, message_id, actor
        )

    async def aclose(self) -> None:
        """Close checks, Redis and the store."""
        await self.pipeline.aclose()
        await self.shared.aclose()
        self.store.close()


async def release_message(
    quarantine: Quarantine,
    store: Store,
    backend: Backend,
    recorder: EventRecorder,
    message_id: str,
    actor: str,
    label_ham: bool = True,
    recipients: Sequence[str] | None = None,
) -> Reply:
    """Send a held message to the backend; mark it released only if the backend took it.

    ``recipients``: only these of its recipients (a mailbox owner releasing their copy);
    the message stays held for the others. A released message was a false positive: that
    is a label (ham) for retraining.
    """
    entry = await asyncio.to_thread(quarantine.get, message_id)
    held = await asyncio.to_thread(quarantine.read, message_id)
    targets = tuple(r for r in entry.rcpts if recipients is None or r.lower() in
                    {x.lower() for x in recipients})  # fmt: skip
    if not targets:
        raise UnknownIdError(f"message {message_id} is not held for {', '.join(recipients or ())}")
    # The copy says what was decided then; what arrives says it was released, and by whom.
    message = relabel(held, actor)
    delivered = await deliver(backend, entry.mail_from, targets, message)
    reply = delivered.reply
    if delivered.ok and len(targets) == len(entry.rcpts):
        await asyncio.to_thread(quarantine.set_status, message_id, "released")
    if delivered.ok and label_ham:
        try:
            await asyncio.to_thread(store.add_label, message_id, "ham", "release", actor)
        except UnknownIdError:
            log.warning("released %s has no event to label", message_id)
    event = SecurityEvent(
        id=f"{new_connection_id()}.1",
        kind=EventKind.QUARANTINE_RELEASE,
        mail_from=entry.mail_from,
        rcpts=targets,
        subject=entry.subject,
        size=entry.size,
        action="release" if delivered.ok else "release_failed",
        backend_reply=str(reply),
        details={
            "quarantine_id": message_id,
            "actor": actor,
            "refused": {rcpt: str(answer) for rcpt, answer in delivered.refused.items()},
        },
    )
    try:
        await asyncio.to_thread(recorder.record, event)
    except StoreError as exc:
        log.error("release event %s could not be stored: %s", event.id, exc)
    return reply


class GroupCommitter:
    """Writes events in groups: everything submitted while a write runs goes in the next one.

    With SQLite a group is committed on the event loop: with WAL and synchronous=NORMAL a
    commit does not fsync (checkpoints do, in their own thread), and a few events cost less
    to write than the hand-off to a thread and back (measured: 8% more messages a second at
    c10x10). Only when the store is in use (the other worker is committing, or a quarantine
    write in a thread here) does the group go to a thread to wait for it. PostgreSQL's
    commits (a network round trip) always go to a thread.
    """

    def __init__(self, recorder: EventRecorder) -> None:
        self.recorder = recorder
        self.pending: list[tuple[SecurityEvent, Retained | None, asyncio.Future[None]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def submit(self, event: SecurityEvent, retained: Retained | None) -> None:
        """Queue one event and wait until it is committed (StoreError if it was not)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((event, retained, done))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        while self.pending:
            await asyncio.sleep(0)  # let the sessions already running add theirs to the group
            batch, self.pending = self.pending, []
            try:
                await self._commit([(e, r) for e, r, _ in batch])
            except Exception as exc:  # every waiter learns of the failure
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(error)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _commit(self, items: list[tuple[SecurityEvent, Retained | None]]) -> None:
        """Log the events, then store them: on the loop, or in a thread if the store is busy."""
        try:
            self.recorder.announce(items)
        finally:  # a failed JSON lines file does not keep the events from the store
            store = self.recorder.store
            try:
                if not store.commits_on_loop:  # a network round trip: never on the loop
                    raise StoreBusy("committed from a thread")
                store.add_many(items, wait=False)
            except StoreBusy:
                await asyncio.to_thread(store.add_many, items)
