"""Label Studio rectangle regions <-> pixel boxes.

Label Studio stores a rectangle as its top-left corner, width and height in percent of the image
(``x``, ``y``, ``width``, ``height`` in 0..100) together with the image's pixel size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from fracture_al.integrations.label_config import RectangleTarget


def box_to_percent(box_xyxy: Iterable[float], width: int, height: int) -> dict[str, float]:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    return {
        "x": 100.0 * x1 / width,
        "y": 100.0 * y1 / height,
        "width": 100.0 * (x2 - x1) / width,
        "height": 100.0 * (y2 - y1) / height,
    }


def percent_to_box(value: dict[str, Any], width: int, height: int) -> list[float]:
    """Pixel ``[x1, y1, x2, y2]`` of an unrotated Label Studio rectangle."""
    x1 = value["x"] * width / 100.0
    y1 = value["y"] * height / 100.0
    return [x1, y1, x1 + value["width"] * width / 100.0, y1 + value["height"] * height / 100.0]


def prediction_regions(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_names: list[str],
    *,
    width: int,
    height: int,
    target: RectangleTarget,
    threshold: float,
) -> list[dict[str, Any]]:
    """The ``result`` list of one Label Studio prediction."""
    regions = []
    for box, score, class_name in zip(boxes, scores, class_names, strict=True):
        label = target.label_of_class.get(class_name)
        if label is None or score < threshold:
            continue
        regions.append(
            {
                "from_name": target.from_name,
                "to_name": target.to_name,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {**box_to_percent(box, width, height), "rotation": 0, "rectanglelabels": [label]},
                "score": round(float(score), 4),
            }
        )
    return regions
