"""Workers that outlive a Redis outage.

RQ's worker quits on the first Redis error outside its dequeue loop: a heartbeat sent while a job
runs, the registry maintenance, or ``register_death`` on the way out (which then raises out of the
process and takes the running training with it). Here a job goes on while Redis is away, the
worker's loop is restarted once Redis answers again, and the way out never raises. How long a
dead worker's job waits before it counts as abandoned is a setting, not RQ's fixed minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import Redis
from rq import Worker
from rq.job import Job

from fracture_al.worker.connection import REDIS_TROUBLE

log = logging.getLogger(__name__)


class OutageTolerantWorker(Worker):
    def __init__(self, *args, heartbeat_grace: int = 60, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_grace = heartbeat_grace

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """RQ's rule (a heartbeat lasts one monitoring interval, or what is left of the job's
        timeout, plus a grace) with the grace from settings instead of RQ's fixed 60 s. A job whose
        heartbeat lapsed is what RQ's registry maintenance treats as abandoned."""
        period = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            period = min(job.timeout - working_time, period)
        return int(period) + self.heartbeat_grace

    def maintain_heartbeats(self, job, execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_TROUBLE as error:
            log.warning("Redis unreachable (%s) while job %s runs: the job goes on", type(error).__name__, job.id)

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_TROUBLE as error:
            log.warning("Redis unreachable (%s) as the worker stopped: its record expires by itself",
                        type(error).__name__)  # fmt: skip

    @property
    def stop_requested(self) -> bool:
        """SIGINT or SIGTERM came (RQ notes the time of a warm shutdown request)."""
        return self._stop_requested or self._shutdown_requested_date is not None


def wait_for_redis(
    connection: Redis, *, give_up: Callable[[], bool] = lambda: False, first_wait: float = 1.0,
    longest_wait: float = 30.0,
) -> None:  # fmt: skip
    """Block until Redis answers a PING (or ``give_up`` says so), backing off exponentially."""
    wait = first_wait
    while not give_up():
        try:
            connection.ping()
            return
        except REDIS_TROUBLE as error:
            log.warning("Redis unreachable (%s): trying again in %.0f s", type(error).__name__, wait)
            time.sleep(wait)
            wait = min(wait * 2, longest_wait)


def work_through_outages(
    make_worker: Callable[[int], OutageTolerantWorker], connection: Redis, *, burst: bool, pause: float = 5.0
) -> None:
    """Run workers one after another until one stops on request (or, in burst mode, runs dry).

    ``make_worker(n)`` builds the n-th (from 0); each needs a name of its own, since a worker that
    could not register its death keeps its name in Redis until it expires. A worker's loop ends
    early only on an error it did not handle (Redis gone, mostly); the next one starts once Redis
    answers, after ``pause`` so that a persistent fault cannot spin the CPU.
    """
    attempt = 0
    while True:
        rq_worker = make_worker(attempt)
        rq_worker.work(burst=burst, with_scheduler=True)
        if burst or rq_worker.stop_requested:
            return
        log.warning("worker %s stopped unexpectedly; starting again once Redis answers", rq_worker.name)
        time.sleep(pause)
        wait_for_redis(connection, give_up=lambda worker=rq_worker: worker.stop_requested)
        if rq_worker.stop_requested:
            return
        attempt += 1
