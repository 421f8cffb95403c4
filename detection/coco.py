"""The COCO detection format, in one place: box conversion between COCO's ``[x, y, width, height]``
and the ``[x1, y1, x2, y2]`` pixels everything else uses, and the records COCO files hold.

Read by the trainer (``detection/data.py``), the evaluator, the importers, the Label Studio export
and FiftyOne; written by the dataset folder and the Label Studio export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def annotation_record(annotation_id: int, image_id: int, category_id: int, box: Sequence[float]) -> dict[str, Any]:
    """A COCO annotation for the pixel box ``[x1, y1, x2, y2]``."""
    bbox = xyxy_to_xywh(box)
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0}  # fmt: skip


def boxes_by_image(annotations: list[dict], name_of: dict[int, str]) -> dict[int, list[tuple[str, list[float]]]]:
    """COCO annotations grouped by image id as ``(class name, [x1, y1, x2, y2])``; annotations of a
    category missing from ``name_of`` are left out."""
    boxes_of: dict[int, list[tuple[str, list[float]]]] = {}
    for annotation in annotations:
        if annotation["category_id"] not in name_of:
            continue
        box = (name_of[annotation["category_id"]], xywh_to_xyxy(annotation["bbox"]))
        boxes_of.setdefault(annotation["image_id"], []).append(box)
    return boxes_of
