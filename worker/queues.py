"""Queues, and the coalescing rule that turns a burst of annotations into one retrain per project."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis, WatchError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

QueueKind = Literal["training", "scoring"]
# The jobs of worker/jobs.py by the dotted path RQ imports them by: enqueuing one loads no torch.
RETRAIN_PROJECT = "fracture_al.worker.jobs.retrain_project"
REFRESH_PREDICTIONS = "fracture_al.worker.jobs.refresh_predictions"
SCORE_TASKS = "fracture_al.worker.jobs.score_tasks"
RANK_QUEUE = "fracture_al.worker.jobs.rank_queue"
WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
# How long an event id is remembered: far longer than any Redis outage whose events are replayed.
EVENT_MEMORY_SECONDS = 7 * 86400
# Marking an event as seen and counting it in one step, so that neither happens without the other.
_COUNT_ONCE = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
  return redis.call('INCR', KEYS[2])
end
return false
"""


@dataclass(frozen=True)
class QueueConfig:
    """The deployment's queueing choices as plain values (``QueueConfig(**settings.queueing)``).

    Queue names, job ids and Redis keys start with ``prefix``, so deployments (or test runs) can
    share one Redis."""

    prefix: str = "fracture-al"
    retries: int = 2
    retrain_min_new_annotations: int = 10
    retrain_job_timeout_seconds: int = 6 * 3600


def queue_name(prefix: str, kind: QueueKind) -> str:
    return f"{prefix}-{kind}"


def get_queue(prefix: str, kind: QueueKind, connection: Redis) -> Queue:
    return Queue(queue_name(prefix, kind), connection=connection)


def retry_intervals(retries: int, first_seconds: int = 30, factor: int = 4) -> list[int]:
    """Seconds before each retry: 30, 120, 480, ... RQ reads the list from its end (the first
    retry waits ``intervals[len - retries_left]``), so it must hold exactly one entry per retry."""
    return [first_seconds * factor**attempt for attempt in range(retries)]


def retry_policy(retries: int) -> Retry | None:
    if not retries:
        return None
    return Retry(max=retries, interval=retry_intervals(retries))


@dataclass
class RetrainRequest:
    job_id: str | None
    status: Literal["queued", "coalesced", "waiting"]
    new_annotations: int


class RetrainScheduler:
    """Per project: counts annotations since the last retrain started, and keeps at most one
    retrain waiting in the queue (a running one does not count: what arrives meanwhile queues the
    next)."""

    def __init__(self, config: QueueConfig, connection: Redis):
        self.config = config
        self.redis = connection

    def _key(self, what: str, project_id: int) -> str:
        return f"{self.config.prefix}:{what}:{project_id}"

    def record_annotation(self, project_id: int, event_id: str | None = None) -> int | None:
        """Count one annotation event; with ``event_id``, at most once per id (a replayed event
        whose first increment reached Redis but whose reply did not is not counted again).
        Returns the new count, or ``None`` for an event already counted."""
        key = self._key("new-annotations", project_id)
        if event_id is None:
            return int(self.redis.incr(key))
        counted = self.redis.eval(_COUNT_ONCE, 2, self._key("event", event_id), key, EVENT_MEMORY_SECONDS)
        return None if counted is None else int(counted)

    def new_annotations(self, project_id: int) -> int:
        return int(self.redis.get(self._key("new-annotations", project_id)) or 0)

    def request(self, project_id: int, *, reason: str, force: bool = False) -> RetrainRequest:
        """Queue a retrain unless one is already waiting, or (without ``force``) too few labels are new."""
        count = self.new_annotations(project_id)
        if not force and count < self.config.retrain_min_new_annotations:
            return RetrainRequest(None, "waiting", count)
        key = self._key("retrain-pending", project_id)
        job_id = f"{self.config.prefix}-retrain-{project_id}-{uuid.uuid4().hex[:10]}"
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    pending = pipe.get(key)
                    if pending and self._still_waiting(pending.decode()):
                        pipe.unwatch()
                        return RetrainRequest(pending.decode(), "coalesced", count)
                    pipe.multi()
                    pipe.set(key, job_id, ex=self.config.retrain_job_timeout_seconds)
                    pipe.execute()
                    break
                except WatchError:
                    continue  # another request changed the key first: look again
        get_queue(self.config.prefix, "training", self.redis).enqueue(
            RETRAIN_PROJECT,
            project_id,
            job_id=job_id,
            job_timeout=self.config.retrain_job_timeout_seconds,
            retry=retry_policy(self.config.retries),
            result_ttl=7 * 86400,
            failure_ttl=30 * 86400,
            description=f"retrain project {project_id} ({reason})",
            meta={"project": project_id, "reason": reason, "stage": "queued"},
        )
        return RetrainRequest(job_id, "queued", count)

    def mark_started(self, project_id: int) -> None:
        """Called by the retrain job as it starts: later annotations count towards the next one."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self._key("retrain-pending", project_id))
            pipe.set(self._key("new-annotations", project_id), 0)
            pipe.execute()

    def _still_waiting(self, job_id: str) -> bool:
        try:
            return Job.fetch(job_id, connection=self.redis).get_status() in WAITING
        except NoSuchJobError:
            return False


def enqueue_job(
    config: QueueConfig, kind: QueueKind, connection: Redis, function: str, *args: Any, **options: Any
) -> Job:
    """Enqueue one of ``worker.jobs`` with the deployment's retry policy."""
    return get_queue(config.prefix, kind, connection).enqueue(
        function,
        *args,
        job_id=f"{config.prefix}-{kind}-{uuid.uuid4().hex[:10]}",
        retry=retry_policy(config.retries),
        result_ttl=7 * 86400,
        failure_ttl=30 * 86400,
        **options,
    )
