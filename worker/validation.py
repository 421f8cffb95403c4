"""The project's frozen validation set: which labelled X-rays the gate judges models on.

Every annotated task without a ``split`` in its data is assigned once, and the assignment is
written into the task (annotators see it as a Data Manager column): ``val`` for a share of
tasks chosen by a hash of the task id, ``train`` for the rest. Written values are never changed
by the worker, so a task in validation stays there and is never trained on, however the share
is set later. ``test`` tasks (from an import) are neither trained nor validated on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from fracture_al.integrations.task_fields import SPLIT_FIELD

VALIDATION, TRAINING, TEST = "val", "train", "test"


def held_out_draw(task_id: int) -> float:
    """A uniform draw in [0, 1) fixed by the task id alone (the same on every worker, every run)."""
    digest = hashlib.sha256(f"fracture-al/validation/{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(task: dict[str, Any]) -> str | None:
    value = (task.get("data") or {}).get(SPLIT_FIELD)
    return value if value in (VALIDATION, TRAINING, TEST) else None


def new_assignments(tasks: Iterable[dict[str, Any]], share: float) -> dict[int, str]:
    """Splits for the tasks that have none yet: ``val`` where the task's draw is under ``share``."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the validation share must lie in [0, 1), not {share}")
    return {
        task["id"]: VALIDATION if held_out_draw(task["id"]) < share else TRAINING
        for task in tasks
        if split_of(task) is None
    }


def with_assignments(tasks: list[dict[str, Any]], assigned: dict[int, str]) -> list[dict[str, Any]]:
    """The tasks with their new splits in their data (what Label Studio holds once they are written)."""
    return [
        {**task, "data": {**task.get("data", {}), SPLIT_FIELD: assigned[task["id"]]}} if task["id"] in assigned
        else task
        for task in tasks
    ]  # fmt: skip
