"""Label Studio mask, outline and choice regions <-> fracture masks and calls.

A brush region holds Label Studio's run-length encoding of an RGBA layer (label-studio-sdk's
``mask2rle`` / ``decode_rle``: a pixel is marked where the layer's alpha is set); a polygon region
its points in percent of the image; a choice region the X-ray's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fracture_al.detection.masks import mask_to_polygons, polygons_to_mask
from fracture_al.integrations.label_config import ChoiceTarget, MaskTarget


def _common(target: MaskTarget | ChoiceTarget, width: int, height: int) -> dict[str, Any]:
    return {"from_name": target.from_name, "to_name": target.to_name, "original_width": width,
            "original_height": height, "image_rotation": 0}  # fmt: skip


def brush_region(mask: np.ndarray, target: MaskTarget, score: float) -> dict[str, Any]:
    """The whole fracture mask as one brush region."""
    from label_studio_sdk.converter.brush import mask2rle  # the SDK's converters import NLTK and scikit-learn

    height, width = mask.shape
    rle = mask2rle(np.where(mask, 255, 0).astype(np.uint8))
    return {**_common(target, width, height), "type": "brushlabels", "score": round(float(score), 4),
            "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [target.label]}}  # fmt: skip


def polygon_regions(mask: np.ndarray, target: MaskTarget, score: float, *, tolerance: float = 1.0) -> list[dict]:
    """One polygon region per outline of the mask, points in percent of the image."""
    height, width = mask.shape
    regions = []
    for polygon in mask_to_polygons(mask, tolerance=tolerance):
        points = [[100.0 * x / width, 100.0 * y / height] for x, y in zip(polygon[0::2], polygon[1::2], strict=True)]
        regions.append({**_common(target, width, height), "type": "polygonlabels", "score": round(float(score), 4),
                        "value": {"points": points, "closed": True, "polygonlabels": [target.label]}})  # fmt: skip
    return regions


def choice_region(probability: float, target: ChoiceTarget, threshold: float, width: int, height: int) -> dict | None:
    """The X-ray's call as a choice with its probability; None when it is healthy and the control
    has no choice for that."""
    choice = target.fracture if probability >= threshold else target.healthy
    if choice is None:
        return None
    return {**_common(target, width, height), "type": "choices", "score": round(float(probability), 4),
            "value": {"choices": [choice]}}  # fmt: skip


def brush_to_mask(value: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The pixels a brush region's RLE marks, as a boolean (height, width) mask."""
    from label_studio_sdk.converter.brush import decode_rle

    layers = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
    return layers.reshape(height, width, 4)[:, :, 3] > 0


def polygon_to_mask(value: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The pixels whose centres a polygon region encloses (detection.masks.polygons_to_mask)."""
    flat = [coordinate for x, y in value["points"] for coordinate in (x * width / 100.0, y * height / 100.0)]
    return polygons_to_mask([flat], height, width)


def annotation_mask(annotation: dict[str, Any], targets: Sequence[MaskTarget], width: int, height: int) -> np.ndarray:
    """The fracture mask an annotation draws: the union of its brush strokes and outlines made with
    the targets' controls and fracture labels (what a retrain trains a segmenter on)."""
    mask = np.zeros((height, width), dtype=bool)
    wanted = {(t.from_name, t.label) for t in targets}
    for region in annotation.get("result", []):
        value = region.get("value", {})
        labels = value.get("brushlabels") or value.get("polygonlabels") or []
        if not any((region.get("from_name"), label) in wanted for label in labels):
            continue
        if region.get("type") == "brushlabels" and value.get("rle"):
            mask |= brush_to_mask(value, width, height)
        elif region.get("type") == "polygonlabels" and len(value.get("points", [])) >= 3:
            mask |= polygon_to_mask(value, width, height)
    return mask
