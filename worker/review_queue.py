"""The review queue between jobs: each scoring chunk's per-task signals, and the ranking last
written to Label Studio, kept in Redis under the deployment's prefix."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from redis import Redis

from fracture_al.sampling.queue import QueueEntry, TaskSignals, rank_tasks

# Signals of a model version are useful until the next version replaces them.
SIGNALS_TTL_SECONDS = 30 * 86400


class ReviewQueueStore:
    def __init__(self, prefix: str, connection: Redis):
        self.prefix = prefix
        self.redis = connection

    def _key(self, what: str, *parts: Any) -> str:
        return ":".join([self.prefix, what, *(str(part) for part in parts)])

    def save_signals(self, project_id: int, model_version: str, signals: Iterable[TaskSignals]) -> None:
        key = self._key("signals", project_id, model_version)
        values = {str(s.task_id): json.dumps(s.to_dict()) for s in signals}
        if values:
            with self.redis.pipeline() as pipe:
                pipe.hset(key, mapping=values)
                pipe.expire(key, SIGNALS_TTL_SECONDS)
                pipe.execute()

    def signals(self, project_id: int, model_version: str) -> list[TaskSignals]:
        stored = self.redis.hgetall(self._key("signals", project_id, model_version))
        return [TaskSignals.from_dict(json.loads(value)) for value in stored.values()]

    def scored_task_ids(self, project_id: int, model_version: str) -> set[int]:
        return {int(task_id) for task_id in self.redis.hkeys(self._key("signals", project_id, model_version))}

    def save_ranking(self, project_id: int, ranking: dict[str, Any]) -> None:
        self.redis.set(self._key("queue", project_id), json.dumps(ranking))

    def ranking(self, project_id: int) -> dict[str, Any] | None:
        stored = self.redis.get(self._key("queue", project_id))
        return json.loads(stored) if stored else None


def rank_stored_signals(
    store: ReviewQueueStore, project_id: int, model_version: str, unlabelled: set[int], options: dict[str, Any]
) -> list[QueueEntry]:
    """The queue over the project's still unlabelled tasks that ``model_version`` has scored."""
    signals = [s for s in store.signals(project_id, model_version) if s.task_id in unlabelled]
    return rank_tasks(signals, **options)


def ranked_with(
    store: ReviewQueueStore, project_id: int, ranking: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """The queue last written to Label Studio (``{"model_version", "task", "options", "entries"}``),
    ranked again from the same stored scores when ``options`` differ from the ones it was ranked
    with. Raises ValueError for options the scores cannot serve."""
    if options == ranking["options"]:
        return ranking
    pool = {entry["task_id"] for entry in ranking["entries"]}
    ranked = rank_stored_signals(store, project_id, ranking["model_version"], pool, options)
    return {**ranking, "options": options, "entries": [entry.to_dict() for entry in ranked]}
