"""Per-X-ray uncertainty of a fracture detector, from its box scores and its boxes under test-time
augmentation. Pure functions over numbers: no model, no I/O.

A detector with one foreground class scores each candidate box with p = P(fracture). Box-level
uncertainties are aggregated over the image; an image with several mid-score candidates and no
confident box comes out uncertain, while one with no candidates at all is a confident negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from scipy.special import rel_entr

from fracture_al.sampling.choices import Aggregation


def least_confidence(scores: np.ndarray) -> np.ndarray:
    """1 - max(p, 1 - p) per box, in [0, 0.5].

    Lewis & Gale, "A sequential algorithm for training text classifiers", SIGIR 1994; for detection
    as in Brust, Käding & Denzler, "Active Learning for Deep Object Detection", VISAPP 2019.
    """
    p = np.asarray(scores, dtype=float)
    return 1.0 - np.maximum(p, 1.0 - p)


def binary_entropy(scores: np.ndarray) -> np.ndarray:
    """-p log2 p - (1-p) log2 (1-p) per box, in [0, 1].

    Shannon entropy as an acquisition function: Settles, "Active Learning Literature Survey",
    2009; per detection and aggregated over the image as in Roy, Unmesh & Namboodiri, "Deep active
    learning for object detection", BMVC 2018.
    """
    p = np.clip(np.asarray(scores, dtype=float), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def margin(scores: np.ndarray) -> np.ndarray:
    """1 - |p - (1 - p)| per box, in [0, 1]: how close the top two classes are.

    Scheffer, Decomain & Wrobel, "Active hidden Markov models for information extraction", 2001
    (margin sampling); used per box for detection by Brust et al., VISAPP 2019.
    """
    p = np.asarray(scores, dtype=float)
    return 1.0 - np.abs(2.0 * p - 1.0)


def firing(scores: np.ndarray) -> np.ndarray:
    """p per box: not an uncertainty but the model's own confidence, so that the X-rays where it
    fires hardest come first. On a healthy X-ray such a box is a hard negative, the false positive
    that teaches a detector most once labelled (Shrivastava, Gupta & Girshick, "Training
    Region-based Object Detectors with Online Hard Example Mining", CVPR 2016); on a fractured one,
    annotators confirm or correct it.
    """
    return np.asarray(scores, dtype=float)


BOX_UNCERTAINTY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confidence": least_confidence,
    "entropy": binary_entropy,
    "margin": margin,
    "hard_negative": firing,
}


def image_entropy(probability: float) -> float:
    """Binary entropy of the X-ray's fracture probability (the calibrated noisy-OR of its box
    scores, :attr:`detection.predictor.ImagePrediction.image_score`): uncertainty about the call on
    the whole X-ray rather than about its most doubtful box, so several faint candidates on one
    X-ray (the fracture the model half sees) add up. Bag-level uncertainty of a multiple-instance
    model: Settles, Craven & Ray, "Multiple-Instance Active Learning", NIPS 2008.
    """
    return float(binary_entropy(np.array([probability]))[0]) if 0.0 < probability < 1.0 else 0.0


def aggregate(values: np.ndarray, how: Aggregation) -> float:
    """Box uncertainties to one image score; an image with no candidate boxes scores 0."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return 0.0
    return float({"max": np.max, "mean": np.mean, "sum": np.sum}[how](values))


def image_uncertainty(scores: np.ndarray, method: str = "entropy", how: Aggregation = "max") -> float:
    """One X-ray's score from its box scores: a box uncertainty aggregated by ``how``."""
    if method not in BOX_UNCERTAINTY:
        raise ValueError(f"unknown box uncertainty {method!r}; choose one of {', '.join(BOX_UNCERTAINTY)}")
    return aggregate(BOX_UNCERTAINTY[method](scores), how)


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every (x1, y1, x2, y2) box of ``first`` with every box of ``second``, shape
    (len(first), len(second)). pycocotools' box IoU (torchvision's numbers), so that ranking a queue
    needs no torch."""

    def xywh(boxes: np.ndarray) -> np.ndarray:
        return np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])

    overlaps = coco_mask.iou(xywh(first), xywh(second), np.zeros(len(second), dtype=np.uint8))
    return np.asarray(overlaps, dtype=float).reshape(len(first), len(second))


def localization_instability(
    boxes: np.ndarray,
    scores: np.ndarray,
    augmented: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    min_score: float = 0.1,
) -> float:
    """How much the confident boxes move or vanish under test-time augmentation, in [0, 1].

    For every box scoring at least ``min_score`` on the original image, its best IoU with the boxes
    predicted on each augmented view (already mapped back to original pixels); a box that vanishes
    has IoU 0. The image score is the score-weighted mean of (1 - IoU) over boxes and views, or 0
    without confident boxes. Consistency-based acquisition after Elezi et al., "Not all labels are
    equal: rationalizing the labeling costs for training object detection", CVPR 2022, and Yu et
    al., "Consistency-based Active Learning for Object Detection", CVPR Workshops 2022.
    """
    boxes, scores = np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(scores, dtype=float)
    confident = scores >= min_score
    if not confident.any() or not augmented:
        return 0.0
    reference = boxes[confident]
    weights = scores[confident]
    instability = []
    for view_boxes, _ in augmented:
        view = np.asarray(view_boxes, dtype=float).reshape(-1, 4)
        best = box_iou(reference, view).max(axis=1) if len(view) else np.zeros(len(reference))
        instability.append(float(np.sum(weights * (1.0 - best)) / np.sum(weights)))
    return float(np.mean(instability))


def _bernoulli_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between Bernoulli(p) and Bernoulli(q), elementwise."""
    first, second = np.stack([p, 1.0 - p]), np.stack([q, 1.0 - q])
    middle = (first + second) / 2.0
    kullback_leibler = rel_entr(first, middle).sum(axis=0), rel_entr(second, middle).sum(axis=0)
    return np.maximum(0.0, 0.5 * kullback_leibler[0] + 0.5 * kullback_leibler[1])


def cald_consistency(
    boxes: np.ndarray,
    scores: np.ndarray,
    augmented: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    beta: float = 1.3,
    min_score: float = 0.05,
) -> float:
    """CALD's consistency of an X-ray's detections with those on augmented views: lower = label first.

    Yu et al., "Consistency-based Active Learning for Object Detection", CVPR Workshops 2022
    (arXiv 2103.10374), stage 1. Each reference box (score >= ``min_score``, torchvision's default
    detection threshold) is matched to the view's box of highest IoU; the pair's consistency is
    ``IoU + (1 - JS(p, q)) * (p + q) / 2``, which is 2 for a confident box found again unchanged.
    A view scores ``min(1, min over boxes of |consistency - beta|)``, the image the mean over views:
    the box nearest ``beta`` (the paper's 1.3) decides, so a faint box that the views agree on (a
    fracture the model half sees) counts as informative and a confident, stable one does not. As in
    the authors' code, an X-ray with no reference box, or a view with no box at all, scores 0 (label
    first). Stage 2 (matching class distributions to the labelled set) has nothing to balance with
    one class.
    """
    boxes, scores = np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(scores, dtype=float)
    kept = scores >= min_score
    if not kept.any() or not augmented:
        return 0.0
    reference, p = boxes[kept], scores[kept]
    per_view = []
    for view_boxes, view_scores in augmented:
        view = np.asarray(view_boxes, dtype=float).reshape(-1, 4)
        if not len(view):
            per_view.append(0.0)
            continue
        overlaps = box_iou(reference, view)
        best_iou, match = overlaps.max(axis=1), overlaps.argmax(axis=1)
        q = np.asarray(view_scores, dtype=float)[match]
        consistency = best_iou + (1.0 - _bernoulli_js(p, q)) * (p + q) / 2.0
        per_view.append(min(1.0, float(np.min(np.abs(consistency - beta)))))
    return float(np.mean(per_view))


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def mask_uncertainty(probabilities: np.ndarray, flipped_back: np.ndarray | None = None, *,
                     threshold: float = 0.5) -> float:  # fmt: skip
    """How unsure a segmenter is of an X-ray, in [0, 1]: the mean binary entropy of the pixels in its
    predicted fracture region (region-level entropy, Mackowiak et al., "CEREALS: Cost-Effective
    REgion-based Active Learning for Semantic Segmentation", BMVC 2018) and, given the map predicted
    on the flipped X-ray and flipped back, 1 - the Dice of the two masks at ``threshold`` (test-time
    augmentation disagreement, Wang et al., "Aleatoric uncertainty estimation with test-time
    augmentation for medical image segmentation", Neurocomputing 2019), averaged.

    Where nothing reaches ``threshold`` the region is the model's best guess, the pixels at least
    half as probable as its most probable one: a faint candidate fracture (the commonest miss)
    counts as uncertain rather than as a confident "healthy".
    """
    p = np.asarray(probabilities, dtype=float)
    if p.size == 0:
        return 0.0
    region = p >= threshold
    if not region.any():
        region = p >= 0.5 * p.max() if p.max() > 0 else np.zeros_like(region)
    entropy_in_region = float(binary_entropy(p[region]).mean()) if region.any() else 0.0
    if flipped_back is None:
        return entropy_in_region
    disagreement = 1.0 - mask_dice(p >= threshold, np.asarray(flipped_back) >= threshold)
    return 0.5 * (entropy_in_region + disagreement)
