"""Segmentation metrics as the study reported them and as a radiologist reads them.

Per X-ray, from a binary predicted mask and the true mask (MONAI's ``compute_dice`` and
``compute_iou`` with ``ignore_empty=False``):

    Dice    2|P & T| / (|P| + |T|)     Jaccard (IoU)  |P & T| / |P | T|
    An X-ray without a fracture scores 1 when nothing is predicted on it and 0 when anything is.

Reported over the fractured X-rays (how well fractures are outlined: the number public FracAtlas
work quotes) and over all X-rays (which also charges false masks on healthy ones), with pixel
accuracy, and image-level accuracy, sensitivity, specificity and AUROC of the X-ray's fracture
probability (its highest pixel probability, or a classifier's output). Every number has a
bootstrap 95% interval over the X-rays (detection.bootstrap).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from sklearn.metrics import roc_auc_score

from fracture_al.detection.bootstrap import bootstrap_interval


@dataclass(frozen=True)
class MaskScores:
    """One X-ray: its overlap scores and its image-level call."""

    image_id: int
    fractured: bool  # the X-ray shows a fracture
    dice: float | None  # None for a classifier, which draws no mask
    jaccard: float | None
    pixel_accuracy: float | None
    probability: float  # the X-ray's fracture probability


def overlap(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and Jaccard of two boolean masks of one size (1 and 1 when both are empty)."""
    as_tensor = [torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None] for m in (predicted, truth)]
    dice = compute_dice(*as_tensor, include_background=True, ignore_empty=False)
    jaccard = compute_iou(*as_tensor, include_background=True, ignore_empty=False)
    return float(dice.item()), float(jaccard.item())


def score_mask(image_id: int, probabilities: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5,
               probability: float | None = None) -> MaskScores:  # fmt: skip
    """Scores of a predicted probability map against the true mask; the X-ray's probability is
    ``probability`` if given (a classifier's), else the highest pixel probability."""
    predicted, truth = np.asarray(probabilities) >= threshold, np.asarray(truth, dtype=bool)
    dice, jaccard = overlap(predicted, truth)
    return MaskScores(
        image_id=image_id,
        fractured=bool(truth.any()),
        dice=dice,
        jaccard=jaccard,
        pixel_accuracy=float((predicted == truth).mean()),
        probability=float(probability if probability is not None else np.max(probabilities, initial=0.0)),
    )


def _mean_of(field: str, fractured_only: bool = False):
    def statistic(scores: Sequence[MaskScores]) -> float | None:
        values = [getattr(s, field) for s in scores if s.fractured or not fractured_only]
        values = [value for value in values if value is not None]
        return statistics.fmean(values) if values else None

    return statistic


def _image_level(name: str, threshold: float):
    def statistic(scores: Sequence[MaskScores]) -> float | None:
        calls = [(s.probability >= threshold, s.fractured) for s in scores]
        if name == "accuracy":
            return statistics.fmean(call == truth for call, truth in calls) if calls else None
        wanted = name == "sensitivity"
        relevant = [call for call, truth in calls if truth == wanted]
        return statistics.fmean((call == wanted) for call in relevant) if relevant else None

    return statistic


def _auroc(scores: Sequence[MaskScores]) -> float | None:
    truth = [s.fractured for s in scores]
    if all(truth) or not any(truth):
        return None
    return float(roc_auc_score(truth, [s.probability for s in scores]))


def mask_metrics(scores: Sequence[MaskScores], *, threshold: float = 0.5, resamples: int = 1000,
                 seed: int = 0) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every metric with its bootstrap 95% interval over the X-rays."""
    statistics_of = {
        "dice_fractured": _mean_of("dice", fractured_only=True),
        "jaccard_fractured": _mean_of("jaccard", fractured_only=True),
        "dice_all": _mean_of("dice"),
        "jaccard_all": _mean_of("jaccard"),
        "pixel_accuracy": _mean_of("pixel_accuracy"),
        "accuracy": _image_level("accuracy", threshold),
        "sensitivity": _image_level("sensitivity", threshold),
        "specificity": _image_level("specificity", threshold),
        "auroc": _auroc,
    }
    return {
        name: bootstrap_interval(list(scores), statistic, resamples=resamples, seed=seed).to_dict()
        for name, statistic in statistics_of.items()
    }
