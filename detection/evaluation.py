"""Detection metrics (COCO mAP through pycocotools) and image-level "fracture present" metrics.

The image-level view is what a reading radiologist cares about first: does the model flag the
X-ray at all? Two questions, two numbers: how likely the X-ray is to show a fracture (the noisy-OR
of its box scores, :func:`detection.image_score.fracture_probability`: AUROC, and the call at a
probability), and whether a box is shown on it at a display threshold (its best box score:
sensitivity and specificity at the operating threshold, what an annotator sees).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score

from fracture_al.detection.bootstrap import bootstrap_interval
from fracture_al.detection.coco import xyxy_to_xywh
from fracture_al.detection.data import CocoFile
from fracture_al.detection.image_score import UNCALIBRATED, ProbabilityCalibration, fracture_probability

COCO_STAT_NAMES = {0: "mAP", 1: "mAP50", 2: "mAP75", 8: "AR100"}


def evaluate_predictions(
    coco: CocoFile,
    predictions: Sequence[dict[str, Any]],
    *,
    image_threshold: float = 0.5,
    calibration: ProbabilityCalibration | None = None,
) -> dict[str, Any]:
    """All metrics for ``predictions`` (one per image, as from ``engine.predict_batches``), and what
    a version evaluated on these X-rays (its validation set) serves with: the box-score threshold
    that should display its boxes (:func:`operating_threshold`) and the calibration of its fracture
    probability (:func:`probability_calibration`). Given the version's ``calibration`` (fitted on
    other X-rays, e.g. when these are its test set), the image-level call is made on the calibrated
    probability, as served, and none is fitted here."""
    fitted = probability_calibration(coco, predictions) if calibration is None else calibration.to_dict()
    served = calibration or UNCALIBRATED
    return {
        **coco_detection_metrics(coco, predictions),
        **image_level_metrics(coco, predictions, threshold=image_threshold, calibration=served),
        "operating_threshold": operating_threshold(match_detections(coco, predictions)),
        "probability_calibration": fitted,
    }


def coco_detection_metrics(coco: CocoFile, predictions: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """mAP@[.5:.95], mAP@50, mAP@75 and AR@100 over the images that have predictions."""
    detections = coco_results(coco, predictions)
    image_ids = [prediction["image_id"] for prediction in predictions]
    ground_truth = _coco_api(coco.content)
    if not ground_truth.getAnnIds(imgIds=image_ids):
        return dict.fromkeys(COCO_STAT_NAMES.values())  # nothing to find: AP is undefined
    if not detections:
        return dict.fromkeys(COCO_STAT_NAMES.values(), 0.0)  # pycocotools cannot load no results
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its whole summary table
        results = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, results, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: (None if evaluator.stats[index] < 0 else float(evaluator.stats[index]))
        for index, name in COCO_STAT_NAMES.items()
    }


def coco_results(coco: CocoFile, predictions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predictions (xyxy boxes, contiguous labels) as COCO result records (xywh, category ids)."""
    category_of_label = {label: category for category, label in coco.label_of_category.items()}
    return [
        {
            "image_id": prediction["image_id"],
            "category_id": category_of_label[int(label)],
            "bbox": xyxy_to_xywh(box),
            "score": float(score),
        }
        for prediction in predictions
        for box, score, label in zip(
            np.asarray(prediction["boxes"], dtype=float).reshape(-1, 4).tolist(),
            np.asarray(prediction["scores"], dtype=float).tolist(),
            np.asarray(prediction["labels"]).tolist(),
            strict=True,
        )
    ]


def _coco_api(content: dict[str, Any]) -> COCO:
    dataset = copy.deepcopy(content)
    for index, annotation in enumerate(dataset.get("annotations", []), start=1):
        annotation.setdefault("id", index)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    dataset.setdefault("annotations", [])
    api = COCO()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def fracture_probabilities_and_truth(
    coco: CocoFile, predictions: Sequence[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Each predicted image's fracture probability (:func:`fracture_probability` of its box
    scores) and whether it has a fracture, in prediction order."""
    has_fracture = {record.image_id: bool(record.boxes) for record in coco.images}
    probability = np.array([fracture_probability(prediction["scores"]) for prediction in predictions])
    return probability, np.array([has_fracture[prediction["image_id"]] for prediction in predictions], dtype=bool)


def probability_calibration(coco: CocoFile, predictions: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """The :class:`ProbabilityCalibration` fitted to these X-rays' fracture probabilities and truth,
    as stored with a version's metrics; None where it cannot be fitted."""
    fitted = ProbabilityCalibration.fit(*fracture_probabilities_and_truth(coco, predictions))
    return fitted.to_dict() if fitted else None


def image_level_metrics(
    coco: CocoFile,
    predictions: Sequence[dict[str, Any]],
    *,
    threshold: float = 0.5,
    calibration: ProbabilityCalibration = UNCALIBRATED,
) -> dict[str, float | None]:
    """Accuracy, sensitivity and specificity of calling an X-ray fractured when its fracture
    probability (through ``calibration``) reaches ``threshold``, and the AUROC of that probability."""
    probability, truth = fracture_probabilities_and_truth(coco, predictions)
    score = np.array([calibration(value) for value in probability])
    flagged = score >= threshold
    positives, negatives = truth.sum(), (~truth).sum()
    return {
        "accuracy": float((flagged == truth).mean()) if len(truth) else None,
        "sensitivity": float((flagged & truth).sum() / positives) if positives else None,
        "specificity": float((~flagged & ~truth).sum() / negatives) if negatives else None,
        "auroc": float(roc_auc_score(truth, score)) if positives and negatives else None,
        "image_threshold": threshold,
    }


@dataclass(frozen=True)
class ImageMatches:
    """One image's detections matched to its boxes at one IoU threshold, as COCOeval matches them.

    COCO matching is decided image by image, so the AP of any multiset of images (a bootstrap
    resample) follows from these records without running COCOeval again.
    """

    image_id: int
    boxes: int  # ground-truth boxes
    scores: np.ndarray  # detection scores, highest first
    matched: np.ndarray  # bool per detection: a true positive at the IoU threshold

    @property
    def top_score(self) -> float:
        """Its best box score: a box is shown on it at any display threshold up to this."""
        return float(self.scores.max(initial=0.0))


def match_detections(
    coco: CocoFile, predictions: Sequence[dict[str, Any]], *, iou_threshold: float = 0.5
) -> list[ImageMatches]:
    """Per-image matches at ``iou_threshold`` (all classes pooled, as the fracture detector has one)."""
    detections = coco_results(coco, predictions)
    image_ids = [p["image_id"] for p in predictions]
    ground_truth = _coco_api(coco.content)
    boxes = {image_id: len(ground_truth.getAnnIds(imgIds=[image_id])) for image_id in image_ids}
    if not detections:
        return [ImageMatches(image_id, boxes[image_id], np.zeros(0), np.zeros(0, bool)) for image_id in image_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.iouThrs = np.array([iou_threshold])
        evaluator.params.areaRng = [evaluator.params.areaRng[0]]  # "all"
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
    pooled: dict[int, tuple[list[float], list[bool]]] = {}
    for record in evaluator.evalImgs:
        if record is None:
            continue
        scores, matched = pooled.setdefault(record["image_id"], ([], []))
        scores.extend(record["dtScores"])
        matched.extend(bool(m) for m in record["dtMatches"][0])
    result = []
    for image_id in image_ids:
        scores, matched = pooled.get(image_id, ([], []))
        order = np.argsort(-np.asarray(scores), kind="mergesort")
        result.append(ImageMatches(image_id, boxes[image_id], np.asarray(scores)[order],
                                   np.asarray(matched, dtype=bool)[order]))  # fmt: skip
    return result


def average_precision(images: Sequence[ImageMatches]) -> float | None:
    """AP of a multiset of matched images, with COCOeval's 101-point interpolated precision."""
    total = sum(image.boxes for image in images)
    if total == 0:
        return None
    scores = np.concatenate([image.scores for image in images]) if images else np.zeros(0)
    matched = np.concatenate([image.matched for image in images]).astype(bool) if images else np.zeros(0, bool)
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    true_positives = np.cumsum(matched[order])
    false_positives = np.cumsum(~matched[order])
    recall = true_positives / total
    precision = true_positives / np.maximum(true_positives + false_positives, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    points = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in points]))


def operating_threshold(images: Sequence[ImageMatches], *, floor: float = 0.05) -> float | None:
    """The box-score threshold at which the boxes shown are most worth showing: the one maximising
    F1 of box detection (a box counts when it matches a fracture at the matching IoU) over the
    given X-rays, e.g. a model's validation set. F1 weighs a missed fracture and a false box
    alike, which is what an annotator correcting pre-annotations pays for (Lipton et al.,
    "Thresholding Classifiers to Maximize F1 Score", ECML PKDD 2014: the optimal threshold is a
    property of the data, not 0.5). Among equal F1 the highest threshold wins (fewer boxes to
    delete); never below ``floor``. None without a fracture, or without any true box found."""
    total = sum(image.boxes for image in images)
    scores = np.concatenate([image.scores for image in images]) if images else np.zeros(0)
    matched = np.concatenate([image.matched for image in images]).astype(bool) if images else np.zeros(0, bool)
    keep = scores >= floor
    scores, matched = scores[keep], matched[keep]
    if total == 0 or not matched.any():
        return None
    order = np.argsort(-scores, kind="mergesort")
    scores, matched = scores[order], matched[order]
    true_positives = np.cumsum(matched)
    f1 = 2 * true_positives / (np.arange(1, len(scores) + 1) + total)
    # Only the last detection of a run of equal scores is a threshold one can set.
    settable = np.append(scores[1:] < scores[:-1], True)
    best = np.flatnonzero(settable & (f1 == f1[settable].max()))[0]
    return float(scores[best])


def sensitivity_at(images: Sequence[ImageMatches], threshold: float) -> float | None:
    """Share of X-rays with a fracture shown a box at display threshold ``threshold``."""
    fractured = [image for image in images if image.boxes]
    if not fractured:
        return None
    return sum(image.top_score >= threshold for image in fractured) / len(fractured)


def specificity_at(images: Sequence[ImageMatches], threshold: float) -> float | None:
    """Share of X-rays without a fracture shown no box at display threshold ``threshold``."""
    healthy = [image for image in images if not image.boxes]
    if not healthy:
        return None
    return sum(image.top_score < threshold for image in healthy) / len(healthy)


def auroc_of(
    images: Sequence[ImageMatches], rule: Callable[[np.ndarray], float] = fracture_probability
) -> float | None:
    """AUROC of the X-rays' image score, ``rule`` of their box scores (their fracture probability
    unless told otherwise); None without both fractured and healthy X-rays."""
    truth = [bool(image.boxes) for image in images]
    if all(truth) or not any(truth):
        return None
    return float(roc_auc_score(truth, [rule(image.scores) for image in images]))


def _probabilities_and_truth(
    images: Sequence[ImageMatches], calibration: ProbabilityCalibration
) -> tuple[np.ndarray, np.ndarray]:
    probability = np.array([calibration(fracture_probability(image.scores)) for image in images])
    return probability, np.array([bool(image.boxes) for image in images])


def brier_of(images: Sequence[ImageMatches], calibration: ProbabilityCalibration = UNCALIBRATED) -> float | None:
    """Brier score of the X-rays' (calibrated) fracture probability: the mean squared distance to
    the truth, 0 for certain and right, 0.25 for always one half (Brier, Monthly Weather Review, 1950)."""
    if not images:
        return None
    probability, truth = _probabilities_and_truth(images, calibration)
    return float(np.mean((probability - truth) ** 2))


def calibration_error_of(
    images: Sequence[ImageMatches], calibration: ProbabilityCalibration = UNCALIBRATED, *, bins: int = 10
) -> float | None:
    """Expected calibration error of the X-rays' (calibrated) fracture probability: over ``bins``
    equal-width bins, the X-ray-weighted gap between the mean probability and the share fractured
    (Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015; Guo et al., ICML 2017)."""
    if not images:
        return None
    probability, truth = _probabilities_and_truth(images, calibration)
    which = np.minimum((probability * bins).astype(int), bins - 1)
    gaps = [abs(probability[which == b].mean() - truth[which == b].mean()) * np.sum(which == b)
            for b in range(bins) if np.any(which == b)]  # fmt: skip
    return float(np.sum(gaps) / len(images))


def call_accuracy_of(
    images: Sequence[ImageMatches], calibration: ProbabilityCalibration = UNCALIBRATED, *, threshold: float = 0.5
) -> float | None:
    """Share of X-rays called right when the call is "fractured" at (calibrated) probability >= ``threshold``."""
    if not images:
        return None
    probability, truth = _probabilities_and_truth(images, calibration)
    return float(np.mean((probability >= threshold) == truth))


def metrics_with_intervals(
    coco: CocoFile, predictions: Sequence[dict[str, Any]], *, threshold: float = 0.5, resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """mAP@50, mAP@75, AUROC, sensitivity and specificity at ``threshold``, each with a bootstrap
    95% interval over the X-rays."""
    at_50 = match_detections(coco, predictions)
    at_75 = match_detections(coco, predictions, iou_threshold=0.75)
    pairs = list(zip(at_50, at_75, strict=True))
    statistics = {
        "mAP50": lambda s: average_precision([a for a, _ in s]),
        "mAP75": lambda s: average_precision([b for _, b in s]),
        "auroc": lambda s: auroc_of([a for a, _ in s]),
        "sensitivity": lambda s: sensitivity_at([a for a, _ in s], threshold),
        "specificity": lambda s: specificity_at([a for a, _ in s], threshold),
    }
    return {
        name: bootstrap_interval(pairs, statistic, resamples=resamples, seed=seed).to_dict()
        for name, statistic in statistics.items()
    }
