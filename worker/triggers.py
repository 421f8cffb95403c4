"""From Label Studio webhook events to retrain requests, without losing events while Redis is down."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fracture_al.settings import Settings
from worker.connection import connect
from worker.queues import RetrainScheduler

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED"}
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class EventSpool:
    """Webhook events that could not be queued, one JSON file each, replayed in arrival order."""

    def __init__(self, folder: Path):
        self.folder = folder

    def put(self, event: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        temporary = self.folder / f".{name}"
        temporary.write_text(json.dumps(event))
        os.replace(temporary, self.folder / name)
        return self.folder / name

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("[0-9]*.json")) if self.folder.is_dir() else []

    def replay(self, handle: Callable[[dict[str, Any]], Any]) -> int:
        """Hand each spooled event to ``handle``, deleting it once handled; stops at the first failure."""
        replayed = 0
        for path in self.pending():
            handle(json.loads(path.read_text()))
            path.unlink()
            replayed += 1
        return replayed


class RetrainTrigger:
    """The backend's webhook sink: annotation events count towards a retrain, START_TRAINING forces one."""

    def __init__(self, settings: Settings, connection_factory: Callable[[Settings], Redis] = connect):
        self.settings = settings
        self.connection_factory = connection_factory
        self.spool = EventSpool(settings.home / "spool" / "webhooks")
        self._connection: Redis | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        action = event.get("action")
        if action not in ANNOTATION_ACTIONS and action != "START_TRAINING":
            return {"status": "ignored", "action": action}
        with self._lock:
            try:
                self.spool.replay(self._handle)
                return self._handle(event)
            except REDIS_DOWN as error:
                self._connection = None
                path = self.spool.put(event)
                log.warning("Redis unreachable (%s): %s kept in %s for retry", type(error).__name__, action, path)
                return {"status": "spooled", "detail": "Redis is unreachable; the event will be retried"}

    def flush(self) -> int:
        """Replay spooled events; called periodically so they go out once Redis is back."""
        with self._lock:
            try:
                return self.spool.replay(self._handle)
            except REDIS_DOWN:
                self._connection = None
                return 0

    def start_flushing(self, every_seconds: float = 30.0) -> threading.Thread:
        def loop() -> None:
            while True:
                time.sleep(every_seconds)
                if self.spool.pending():
                    self.flush()

        thread = threading.Thread(target=loop, name="webhook-spool", daemon=True)
        thread.start()
        return thread

    def _handle(self, event: dict[str, Any]) -> dict[str, Any]:
        project = event.get("project")
        project_id = int(project["id"] if isinstance(project, dict) else project)
        scheduler = RetrainScheduler(self.settings, self._redis())
        action = event["action"]
        if action == "START_TRAINING":
            request = scheduler.request(project_id, reason="START_TRAINING", force=True)
        else:
            scheduler.record_annotation(project_id)
            request = scheduler.request(project_id, reason=action)
        log.info("webhook %s project %s: retrain %s (%s)", action, project_id, request.status, request.job_id)
        return {"status": request.status, "job_id": request.job_id, "new_annotations": request.new_annotations}

    def _redis(self) -> Redis:
        if self._connection is None:
            self._connection = self.connection_factory(self.settings)
        return self._connection
