"""Test-set predictions kept beside a benchmark's result, so intervals can be computed afterwards."""

from __future__ import annotations

from typing import Any

import numpy as np


def compact(predictions: list[dict[str, Any]], floor: float = 0.02) -> list[dict[str, Any]]:
    """Predictions as JSON, dropping boxes under ``floor`` (on the few-label runs they moved mAP@50
    by under 0.001). Boxes keep every digit: rounding them to 0.1 px once moved a detection across
    IoU 0.5 and mAP@50 by 0.023."""
    rows = []
    for p in predictions:
        keep = np.asarray(p["scores"]) >= floor
        rows.append({
            "image_id": p["image_id"],
            "boxes": np.asarray(p["boxes"]).reshape(-1, 4)[keep].tolist(),
            "scores": [round(v, 4) for v in np.asarray(p["scores"])[keep].tolist()],
            "labels": np.asarray(p["labels"])[keep].tolist(),
        })  # fmt: skip
    return rows


def expand(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``compact``'s rows as the arrays the evaluation functions take."""
    return [
        {"image_id": p["image_id"], "boxes": np.asarray(p["boxes"], dtype=float).reshape(-1, 4),
         "scores": np.asarray(p["scores"], dtype=float), "labels": np.asarray(p["labels"], dtype=int)}
        for p in rows
    ]  # fmt: skip
