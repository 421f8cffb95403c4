"""The review queue: unlabelled X-rays ranked by how much labelling them should teach the model.

Pure ranking over what the scoring jobs measured per task (a detector's candidate box scores, box
stability under test-time augmentation and backbone embedding; a segmenter's mask uncertainty); no
model, no Label Studio, no Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fracture_al.sampling.choices import Aggregation, Strategy, Uncertainty
from fracture_al.sampling.control_arm import QUEUE_ARM, interleave_random_arm
from fracture_al.sampling.diversity import review_order
from fracture_al.sampling.uncertainty import image_entropy, image_uncertainty


@dataclass(frozen=True)
class TaskSignals:
    """What one scoring pass measured on one unlabelled task."""

    task_id: int
    # Every candidate box the detector returned, before any display threshold; None when a
    # segmentation model scored the task.
    box_scores: list[float] | None
    instability: float | None  # localisation instability under TTA; None when TTA was off
    embedding: list[float] | None
    consistency: float | None = None  # CALD's consistency under TTA (lower = label first); None when TTA was off
    mask_uncertainty: float | None = None  # a segmenter's (sampling/uncertainty.mask_uncertainty)
    fracture_probability: float | None = None  # the detector's, calibrated; None from scoring before it was kept
    # Its mean over the original and the TTA views (each calibrated); None when TTA was off.
    fracture_probability_tta: float | None = None

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


# The uncertainties measured as one number per task, by the TaskSignals field that holds it, how
# it becomes "higher = label first", and what to do when a task was scored without it.
MEASURED_SCORES = {
    "tta": ("instability", lambda value: value, "turn FRACTURE_AL_SCORE_WITH_TTA on and re-score"),
    "cald": ("consistency", lambda value: 1.0 - value, "turn FRACTURE_AL_SCORE_WITH_TTA on and re-score"),
    "mask": ("mask_uncertainty", lambda value: value, "a detector scored them: rank with a box uncertainty"),
    "image_entropy": ("fracture_probability", image_entropy, "re-score them"),
    # The entropy of the mean prediction over stochastic passes (Gal, Islam & Ghahramani, "Deep
    # Bayesian Active Learning with Image Data", ICML 2017, max entropy), the passes being test-time
    # augmentations (Ayhan & Berens, MIDL 2018): views that disagree pull the mean towards one half.
    "image_entropy_tta": ("fracture_probability_tta", image_entropy, "turn FRACTURE_AL_SCORE_WITH_TTA on and re-score"),
}
# Every other uncertainty is one of the detector's box scores, aggregated over the X-ray.
BOX_SCORES = ("box_scores", None, "a segmentation model scored them: rank with the 'mask' uncertainty")


def uncertainty_scores(
    signals: Sequence[TaskSignals], uncertainty: Uncertainty = "entropy", aggregation: Aggregation = "max"
) -> np.ndarray:
    """One acquisition score per task, higher = label first: a box-score uncertainty aggregated over
    the X-ray, the entropy of the X-ray's fracture probability (``"image_entropy"``; of its mean over
    test-time augmentations, ``"image_entropy_tta"``), one measured
    under test-time augmentation (localisation instability, ``"tta"``, or CALD's consistency,
    ``"cald"``), or a segmenter's mask uncertainty (``"mask"``). Raises
    ValueError when a task was scored without what ``uncertainty`` needs."""
    field, to_score, remedy = MEASURED_SCORES.get(uncertainty, BOX_SCORES)
    missing = [s.task_id for s in signals if getattr(s, field) is None]
    if missing:
        raise ValueError(f"{len(missing)} task(s) were scored without what the '{uncertainty}' uncertainty needs "
                         f"(e.g. task {missing[0]}): {remedy}, or choose another uncertainty")  # fmt: skip
    if to_score is not None:
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
