"""The review queue: unlabelled X-rays ranked by how much labelling them should teach the model.

Pure ranking over what the scoring jobs measured per task (its candidate box scores, box stability
under test-time augmentation, a backbone embedding); no model, no Label Studio, no Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fracture_al.sampling.choices import Aggregation, Strategy, Uncertainty
from fracture_al.sampling.control_arm import QUEUE_ARM, interleave_random_arm
from fracture_al.sampling.diversity import review_order
from fracture_al.sampling.uncertainty import image_uncertainty


@dataclass(frozen=True)
class TaskSignals:
    """What one scoring pass measured on one unlabelled task."""

    task_id: int
    box_scores: list[float]  # every candidate box the detector returned, before any display threshold
    instability: float | None  # localisation instability under TTA; None when TTA was off
    embedding: list[float] | None
    consistency: float | None = None  # CALD's consistency under TTA (lower = label first); None when TTA was off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TaskSignals:
        return cls(**values)


@dataclass(frozen=True)
class QueueEntry:
    task_id: int
    rank: int  # 1 = label first
    uncertainty: float
    # The rank mapped into [0, 1): what Label Studio's "prediction score" column gets, so that its
    # ascending sort (least sure first, Label Studio's uncertainty-sampling convention) walks the
    # queue even where diversity has reordered the most uncertain X-rays.
    queue_score: float
    arm: str = QUEUE_ARM  # which arm put the task here (sampling/control_arm.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The scores measured on test-time augmented views, by the TaskSignals field that holds them, and
# how each becomes "higher = label first".
AUGMENTED_SCORES = {"tta": ("instability", lambda value: value), "cald": ("consistency", lambda value: 1.0 - value)}


def uncertainty_scores(
    signals: Sequence[TaskSignals], uncertainty: Uncertainty = "entropy", aggregation: Aggregation = "max"
) -> np.ndarray:
    """One acquisition score per task, higher = label first: a box-score uncertainty aggregated over
    the X-ray, or one measured under test-time augmentation: localisation instability (``"tta"``)
    or CALD's consistency (``"cald"``, sampling/uncertainty.cald_consistency)."""
    if uncertainty in AUGMENTED_SCORES:
        field, to_score = AUGMENTED_SCORES[uncertainty]
        missing = [s.task_id for s in signals if getattr(s, field) is None]
        if missing:
            raise ValueError(
                f"{len(missing)} task(s) were scored without test-time augmentation (e.g. task {missing[0]}); "
                "turn FRACTURE_AL_SCORE_WITH_TTA on and re-score, or choose another uncertainty"
            )
        return np.array([to_score(getattr(s, field)) for s in signals], dtype=float)
    return np.array([image_uncertainty(np.array(s.box_scores), uncertainty, aggregation) for s in signals])


def rank_tasks(
    signals: Sequence[TaskSignals],
    *,
    uncertainty: Uncertainty = "entropy",
    aggregation: Aggregation = "max",
    strategy: Strategy = "k_center",
    batch_size: int = 20,
    random_share: float = 0.0,
    seed: int = 0,
) -> list[QueueEntry]:
    """Every task in queue order: a diverse batch of the ``batch_size`` most useful X-rays first
    (``strategy``), then the rest by decreasing uncertainty, with ``random_share`` of the places of
    every batch given to X-rays drawn at random (the control arm). Ties go to the lower task id, so
    the same signals always give the same queue."""
    ordered = sorted(signals, key=lambda s: s.task_id)
    if not ordered:
        return []
    scores = uncertainty_scores(ordered, uncertainty, aggregation)
    embeddings = None
    if strategy != "uncertainty" and all(s.embedding is not None for s in ordered):
        embeddings = np.array([s.embedding for s in ordered], dtype=float)
    order = review_order(scores, embeddings, top_k=batch_size, strategy=strategy, seed=seed)
    placed = interleave_random_arm([int(index) for index in order], random_share, batch_size, seed)
    return [
        QueueEntry(
            task_id=ordered[index].task_id,
            rank=position + 1,
            uncertainty=float(scores[index]),
            queue_score=position / len(placed),
            arm=arm,
        )
        for position, (index, arm) in enumerate(placed)
    ]
