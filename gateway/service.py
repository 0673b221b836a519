"""The gateway's parts in service (pipeline, backend, store, quarantine) and their reload."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from pathlib import Path

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.context import ScanContext, new_connection_id
from gateway.errors import ConfigError, StoreError, UnknownIdError
from gateway.events import EventRecorder, JsonLinesSink, Retained, SecurityEvent, SqliteStore
from gateway.pipeline import Pipeline
from gateway.quarantine import Quarantine
from gateway.relay import Backend, Reply, deliver, make_backend
from gateway.types import Action

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    """Short sha256 of a file, used as a version label in events."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


class Gateway:
    """Everything a message needs after SMTP: build once, reload the pipeline on SIGHUP."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.hostname = settings.server.identity
        self.pipeline = Pipeline.from_settings(settings)
        self.versions = self._versions(self.pipeline)
        self.backend: Backend = make_backend(settings.backend, self.hostname)
        self.store = SqliteStore(settings.store.database)
        self.quarantine = Quarantine(settings.store.quarantine_dir, self.store)
        jsonl = JsonLinesSink(settings.store.jsonl) if settings.store.jsonl else None
        self.recorder = EventRecorder(self.store, jsonl)

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
        return Retained(raw if keep_raw else None, ctx.features.to_dict(), expires)

    async def record(self, event: SecurityEvent, retained: Retained | None = None) -> bool:
        """Record an event off the event loop; a store failure is logged, never raised."""
        try:
            await asyncio.to_thread(self.recorder.record, event, retained)
        except StoreError as exc:
            log.error("event %s could not be stored: %s", event.id, exc)
            return False
        return True

    async def reload(self) -> bool:
        """Re-read the config file and rebuild the pipeline; keep the old one on any error."""
        event_id = f"{new_connection_id()}.1"
        try:
            settings = load_settings(self.config_path) if self.config_path else self.settings
            pipeline = Pipeline.from_settings(settings)
        except ConfigError as exc:
            log.error("reload refused, keeping the pipeline in service: %s", exc)
            await self.record(
                SecurityEvent(id=event_id, kind="reload_failed", reason=str(exc)[:2000])
            )
            return False
        old, self.pipeline = self.pipeline, pipeline
        self.settings = settings
        self.versions = self._versions(pipeline)
        # Sessions already scanning keep the old pipeline object until they finish.
        await old.aclose()
        log.info("reloaded: enabled checks %s", [c.name for c in pipeline.checks])
        await self.record(SecurityEvent(id=event_id, kind="reload", versions=dict(self.versions)))
        return True

    async def release(self, message_id: str, actor: str = "cli") -> Reply:
        """Send a held message to the backend; mark it released only if the backend took it."""
        entry = await asyncio.to_thread(self.quarantine.get, message_id)
        message = await asyncio.to_thread(self.quarantine.read, message_id)
        reply = await deliver(self.backend, entry.mail_from, entry.rcpts, message)
        if reply.ok:
            await asyncio.to_thread(self.quarantine.set_status, message_id, "released")
            # A released message was a false positive: that is a label (ham) for retraining.
            try:
                await asyncio.to_thread(self.store.add_label, message_id, "ham", "release", actor)
            except UnknownIdError:
                log.warning("released %s has no event to label", message_id)
        await self.record(
            SecurityEvent(
                id=f"{new_connection_id()}.1",
                kind="quarantine_release",
                mail_from=entry.mail_from,
                rcpts=entry.rcpts,
                subject=entry.subject,
                size=entry.size,
                action="release" if reply.ok else "release_failed",
                backend_reply=str(reply),
                details={"quarantine_id": message_id, "actor": actor},
            )
        )
        return reply

    async def aclose(self) -> None:
        """Close checks and the store."""
        await self.pipeline.aclose()
        self.store.close()
