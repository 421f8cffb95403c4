"""Anchor sizes and aspect ratios fitted to a training set's boxes.

The region proposal network only learns to propose what its anchors can match (torchvision labels
an anchor positive at IoU >= 0.7 with a box): anchors far from the boxes' sizes leave small
fractures with no positive anchor at all. Following YOLOv2's dimension clusters (Redmon and
Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017), the sizes come from the data, here as
evenly spaced quantiles of the boxes' side length at the scale the detector sees them, two per
feature level, finest level first; the ratios are the quartiles and median of height / width.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fracture_al.detection.data import CocoImage


def resize_factor(width: int, height: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's GeneralizedRCNNTransform scales an image by."""
    return min(min_size / min(width, height), max_size / max(width, height))


def box_shapes(images: Iterable[CocoImage], min_size: int, max_size: int) -> np.ndarray:
    """(N, 2) widths and heights of every box, in pixels after the detector's resize."""
    shapes = [
        (
            (x2 - x1) * resize_factor(image.width, image.height, min_size, max_size),
            (y2 - y1) * resize_factor(image.width, image.height, min_size, max_size),
        )
        for image in images
        for x1, y1, x2, y2 in image.boxes
    ]
    return np.asarray(shapes, dtype=float).reshape(-1, 2)


def fit_anchors(
    images: Iterable[CocoImage], min_size: int, max_size: int, *, levels: int = 4, per_level: int = 2
) -> tuple[list[list[int]], list[float]]:
    """``(sizes per level, aspect ratios)`` for a ``levels``-level FPN detector."""
    shapes = box_shapes(images, min_size, max_size)
    if len(shapes) < levels * per_level:
        raise ValueError(f"{len(shapes)} boxes are too few to fit {levels * per_level} anchor sizes")
    sides = np.sqrt(shapes[:, 0] * shapes[:, 1])
    count = levels * per_level
    quantiles = (np.arange(count) + 0.5) / count
    sizes = np.maximum(np.round(np.quantile(sides, quantiles)), 4).astype(int)
    ratios = np.quantile(shapes[:, 1] / shapes[:, 0], [0.25, 0.5, 0.75])
    return (
        [sizes[level * per_level : (level + 1) * per_level].tolist() for level in range(levels)],
        [round(float(ratio), 2) for ratio in ratios],
    )
