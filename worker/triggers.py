"""From Label Studio webhook events to retrain requests, without losing or double-counting events
while Redis is down, slow or flapping."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis import Redis

from fracture_al.worker.connection import REDIS_TROUBLE
from fracture_al.worker.queues import QueueConfig, RetrainScheduler

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED"}
# A webhook answers within a few seconds whatever Redis does: past this, the event is spooled.
WEBHOOK_REDIS_TIMEOUT_SECONDS = 2.0


class MalformedEvent(ValueError):
    """A webhook event the trigger cannot use (no project id, say)."""


def project_of(event: dict[str, Any]) -> int:
    """The project id of a webhook event (``{"project": {"id": 3}}``, or a bare id)."""
    project = event.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    if isinstance(project, str) and project.isascii() and project.isdigit():
        project = int(project)
    if isinstance(project, bool) or not isinstance(project, int) or project < 0:
        raise MalformedEvent("webhook event has no valid 'project' id")
    return project


class EventSpool:
    """Webhook events that could not be queued, one JSON file each, replayed in arrival order.

    Several backend processes share the folder; a lock file lets one of them replay at a time.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def put(self, event: dict[str, Any]) -> Path:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        temporary = self.folder / f".{name}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(event, file)
        os.replace(temporary, self.folder / name)
        return self.folder / name

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("[0-9]*.json")) if self.folder.is_dir() else []

    def replay(self, handle: Callable[[dict[str, Any]], Any]) -> int:
        """Hand each spooled event to ``handle``, deleting it once handled; stops at the first
        failure. Returns how many were replayed (0 also when another process is replaying)."""
        if not self.pending():
            return 0
        replayed = 0
        with self._replaying() as mine:
            if not mine:
                return 0
            for path in self.pending():
                try:
                    event = json.loads(path.read_text())
                except FileNotFoundError:
                    continue
                except ValueError:
                    log.error("spooled event %s is unreadable; moved aside", path.name)
                    path.rename(path.with_suffix(".unreadable"))
                    continue
                handle(event)
                path.unlink(missing_ok=True)
                replayed += 1
        return replayed

    @contextmanager
    def _replaying(self) -> Iterator[bool]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.folder / ".replay.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(descriptor)  # closing releases the lock


class RetrainTrigger:
    """The backend's webhook sink: annotation events count towards a retrain, START_TRAINING forces one.

    Each event gets an id as it arrives and keeps it in the spool, so a replay counts it at most once.
    """

    def __init__(self, config: QueueConfig, spool_folder: Path, connect: Callable[[], Redis]):
        """``connect`` opens the deployment's Redis, with timeouts of about
        :data:`WEBHOOK_REDIS_TIMEOUT_SECONDS`: a hung Redis must not hold a webhook."""
        self.config = config
        self.connect = connect
        self.spool = EventSpool(spool_folder)
        self._connection: Redis | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        action = event.get("action")
        if action not in ANNOTATION_ACTIONS and action != "START_TRAINING":
            return {"status": "ignored", "action": action}
        kept = {"action": action, "project": project_of(event), "event_id": uuid.uuid4().hex}
        with self._lock:
            try:
                self.spool.replay(self._handle)
                return self._handle(kept)
            except REDIS_TROUBLE as error:
                self._connection = None
                path = self.spool.put(kept)
                log.warning("Redis unreachable (%s): %s kept in %s for retry", type(error).__name__, action, path)
                return {"status": "spooled", "detail": "Redis is unreachable; the event will be retried"}

    def flush(self) -> int:
        """Replay spooled events; called periodically so they go out once Redis is back."""
        with self._lock:
            try:
                return self.spool.replay(self._handle)
            except REDIS_TROUBLE:
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
        project_id, action = project_of(event), event["action"]
        scheduler = RetrainScheduler(self.config, self._redis())
        if action == "START_TRAINING":
            request = scheduler.request(project_id, reason="START_TRAINING", force=True)
        else:
            if scheduler.record_annotation(project_id, event.get("event_id")) is None:
                log.info("webhook event %s was counted before; not counted again", event.get("event_id"))
            request = scheduler.request(project_id, reason=action)
        log.info("webhook %s project %s: retrain %s (%s)", action, project_id, request.status, request.job_id)
        return {"status": request.status, "job_id": request.job_id, "new_annotations": request.new_annotations}

    def _redis(self) -> Redis:
        if self._connection is None:
            self._connection = self.connect()
        return self._connection
