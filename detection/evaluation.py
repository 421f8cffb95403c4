"""Detection metrics (COCO mAP through pycocotools) and image-level "fracture present" metrics.

The image-level view is what a reading radiologist cares about first: does the model flag the
X-ray at all? Its score is the highest box score on the image (0 without boxes).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score

from detection.data import CocoFile

COCO_STAT_NAMES = {0: "mAP", 1: "mAP50", 2: "mAP75", 8: "AR100"}


def evaluate_predictions(
    coco: CocoFile, predictions: Sequence[dict[str, Any]], *, image_threshold: float = 0.5
) -> dict[str, float | None]:
    """All metrics for ``predictions`` (one per image, as from ``engine.predict_batches``)."""
    return {
        **coco_detection_metrics(coco, predictions),
        **image_level_metrics(coco, predictions, threshold=image_threshold),
    }


def coco_detection_metrics(coco: CocoFile, predictions: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """mAP@[.5:.95], mAP@50, mAP@75 and AR@100 over the images that have predictions."""
    category_of_label = {label: category for category, label in coco.label_of_category.items()}
    detections = [
        {
            "image_id": prediction["image_id"],
            "category_id": category_of_label[int(label)],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        for prediction in predictions
        for (x1, y1, x2, y2), score, label in zip(
            np.asarray(prediction["boxes"], dtype=float).reshape(-1, 4).tolist(),
            np.asarray(prediction["scores"], dtype=float).tolist(),
            np.asarray(prediction["labels"]).tolist(),
            strict=True,
        )
    ]
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


def image_scores(predictions: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Highest box score per image: the model's belief that the X-ray shows a fracture."""
    return {
        prediction["image_id"]: float(np.asarray(prediction["scores"]).max(initial=0.0)) for prediction in predictions
    }


def image_level_metrics(
    coco: CocoFile, predictions: Sequence[dict[str, Any]], *, threshold: float = 0.5
) -> dict[str, float | None]:
    """Accuracy, sensitivity, specificity at ``threshold`` and AUROC of the image score."""
    has_fracture = {record.image_id: bool(record.boxes) for record in coco.images}
    scores = image_scores(predictions)
    truth = np.array([has_fracture[image_id] for image_id in scores])
    score = np.array(list(scores.values()))
    flagged = score >= threshold
    positives, negatives = truth.sum(), (~truth).sum()
    return {
        "accuracy": float((flagged == truth).mean()) if len(truth) else None,
        "sensitivity": float((flagged & truth).sum() / positives) if positives else None,
        "specificity": float((~flagged & ~truth).sum() / negatives) if negatives else None,
        "auroc": float(roc_auc_score(truth, score)) if positives and negatives else None,
        "image_threshold": threshold,
    }
