"""What `fracture-al jobs` shows: every job of our queues, by state, with its progress and outcome."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from fracture_al.worker.connection import REDIS_TROUBLE
from fracture_al.worker.queues import get_queue

PROGRESS_KEYS = ("stage", "recipe", "epoch", "iteration", "loss", "lr", "model_version", "result", "reason")


def job_rows(prefix: str, connection: Redis, *, monitoring_interval: int, limit: int = 20) -> list[dict[str, Any]]:
    """Every job of the deployment's queues, by state; ``monitoring_interval`` is the workers'
    heartbeat period, to tell a running job from one whose worker died."""
    rows = []
    for kind in ("training", "scoring"):
        queue = get_queue(prefix, kind, connection)
        scheduled = ScheduledJobRegistry(queue=queue)
        by_state = {
            "running": StartedJobRegistry(queue=queue).get_job_ids(),
            "queued": queue.get_job_ids(),
            "scheduled": scheduled.get_job_ids(),
            "failed": FailedJobRegistry(queue=queue).get_job_ids(),
            "finished": FinishedJobRegistry(queue=queue).get_job_ids(),
        }
        for state, ids in by_state.items():
            for job in Job.fetch_many(ids[-limit:], connection=connection):
                if job is None:
                    continue
                row = _row(kind, state, job)
                if state == "scheduled":
                    row["outcome"] = _retry_outcome(job, scheduled.get_scheduled_time(job))
                if state == "running":
                    row["outcome"] = _liveness(job, monitoring_interval)
                rows.append(row)
    return rows


def record_last_error(job: Job, exc_type: type, exc_value: BaseException, traceback: Any) -> bool:
    """A worker exception handler: keeps the error in the job's meta, since RQ stores a result
    only for a job's final failure and `jobs` should say why a retrying job failed last time."""
    job.meta["last_error"] = f"{exc_type.__name__}: {exc_value}"[:500]
    with contextlib.suppress(*REDIS_TROUBLE):  # shown when Redis is there; the retry does not need it
        job.save_meta()
    return True  # let RQ's own handling go on


def _last_error(job: Job) -> str | None:
    last = job.latest_result()
    if last is not None and last.exc_string:
        return last.exc_string.strip().splitlines()[-1]
    return job.meta.get("last_error")


def _retry_outcome(job: Job, at: datetime | None) -> str:
    """A job waiting for its next attempt: when, and why the last one failed."""
    when = f"next attempt {at:%Y-%m-%d %H:%M:%S} UTC" if at else "next attempt scheduled"
    error = _last_error(job)
    return f"{when}; last error: {error}" if error else when


def _liveness(job: Job, monitoring_interval: int) -> str:
    """When a running job was last heard of: a worker that died stops sending heartbeats."""
    heartbeat = job.last_heartbeat
    if heartbeat is None:
        return "running"
    age = (datetime.now(UTC) - heartbeat.replace(tzinfo=UTC)).total_seconds()
    if age > 3 * monitoring_interval:  # a heartbeat comes every interval; the job expires at interval + grace
        return f"no heartbeat for {age:.0f} s (worker {job.worker_name or '?'} gone?); it is retried once expired"
    return f"heartbeat {age:.0f} s ago from {job.worker_name or '?'}"


def _row(kind: str, state: str, job: Job) -> dict[str, Any]:
    meta = job.get_meta(refresh=False)
    progress = " ".join(
        f"{key}={meta[key]:.4g}" if isinstance(meta.get(key), float) else f"{key}={meta[key]}"
        for key in PROGRESS_KEYS
        if key in meta
    )
    outcome = (_last_error(job) or "failed") if state == "failed" else str(job.ended_at or "")
    return {
        "queue": kind,
        "state": state,
        "id": job.id,
        "description": job.description or job.func_name,
        "progress": progress,
        "outcome": outcome,
        "retries_left": job.retries_left,
        "meta": meta,
    }
