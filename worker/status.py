"""What `fracture-al jobs` shows: every job of our queues, by state, with its progress and outcome."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from fracture_al.settings import Settings
from worker.queues import get_queue

PROGRESS_KEYS = ("stage", "epoch", "iteration", "loss", "lr", "model_version", "result", "reason")


def job_rows(settings: Settings, connection: Redis, *, limit: int = 20) -> list[dict[str, Any]]:
    rows = []
    for kind in ("training", "scoring"):
        queue = get_queue(settings, kind, connection)
        by_state = {
            "running": StartedJobRegistry(queue=queue).get_job_ids(),
            "queued": queue.get_job_ids(),
            "scheduled": ScheduledJobRegistry(queue=queue).get_job_ids(),
            "failed": FailedJobRegistry(queue=queue).get_job_ids(),
            "finished": FinishedJobRegistry(queue=queue).get_job_ids(),
        }
        for state, ids in by_state.items():
            for job in Job.fetch_many(ids[-limit:], connection=connection):
                if job is not None:
                    rows.append(_row(kind, state, job))
    return rows


def _row(kind: str, state: str, job: Job) -> dict[str, Any]:
    meta = job.get_meta(refresh=False)
    progress = " ".join(
        f"{key}={meta[key]:.4g}" if isinstance(meta.get(key), float) else f"{key}={meta[key]}"
        for key in PROGRESS_KEYS
        if key in meta
    )
    if state == "failed":
        last = job.latest_result()
        outcome = (last.exc_string or "").strip().splitlines()[-1] if last and last.exc_string else "failed"
    else:
        outcome = str(job.ended_at or "")
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
