"""Fracture masks: COCO polygons rasterised at the image size, and masks back to polygons.

FracAtlas outlines every fracture with a polygon beside its box. A pixel belongs to the mask when
its centre lies inside an outline (pycocotools' rasteriser, the COCO reference); an X-ray without
fractures has an all-background mask, and several fractures on one X-ray make one mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

Polygon = list[float]  # x1, y1, x2, y2, ... in pixels


def polygons_of(segmentation: Any) -> list[Polygon]:
    """The polygons of one COCO annotation's ``segmentation`` (a list of flat point lists; FracAtlas'
    files hold it as a JSON string). Fewer than three points is no outline."""
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation) if segmentation.strip() else []
    if not isinstance(segmentation, list):
        return []  # run-length encoded crowd regions are not outlines
    return [[float(v) for v in polygon] for polygon in segmentation if isinstance(polygon, list) and len(polygon) >= 6]


def polygons_to_mask(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """A ``height x width`` boolean mask: True where a pixel's centre lies inside any polygon."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    from pycocotools import mask as coco_mask  # imported here: the backend loads this module, not pycocotools

    encoded = coco_mask.frPyObjects([list(p) for p in polygons], height, width)
    return coco_mask.decode(coco_mask.merge(encoded)).astype(bool)


def mask_to_polygons(mask: np.ndarray, *, tolerance: float = 1.0) -> list[Polygon]:
    """Outlines of a mask's regions in pixels (x, y), simplified to within ``tolerance`` pixels:
    what a polygon pre-annotation shows. Regions under three points are dropped."""
    from skimage import measure  # scikit-image is slow to import and needed only here

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)  # regions touching the border close
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        simplified = measure.approximate_polygon(contour, tolerance) - 1.0  # undo the padding
        if len(simplified) >= 4:  # a closed ring repeats its first point
            polygons.append([float(v) for row, col in simplified[:-1] for v in (col + 0.5, row + 0.5)])
    return polygons
