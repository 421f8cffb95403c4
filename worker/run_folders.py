"""Run folders of retrain jobs (``<home>/runs/<job id>``: the exported X-rays and the training
checkpoint, tens of MB each). A retried job resumes from its folder, so a folder lives exactly as
long as its job can still run: removed when the job ends, or later, for a job whose worker was
killed on its last attempt, by the next retrain."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def remove_run_folder(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


def prune_ended_runs(runs_dir: Path, job_id_prefix: str, connection: Redis) -> list[str]:
    """Remove the folders of jobs (ids starting with ``job_id_prefix``) that can no longer run."""
    removed = []
    for folder in sorted(runs_dir.glob(f"{job_id_prefix}*")) if runs_dir.is_dir() else []:
        try:
            ended = Job.fetch(folder.name, connection=connection).get_status() in ENDED
        except NoSuchJobError:
            ended = True
        if ended:
            remove_run_folder(folder)
            removed.append(folder.name)
    if removed:
        log.info("removed the run folders of ended jobs: %s", ", ".join(removed))
    return removed
