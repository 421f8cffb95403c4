"""Test-set predictions kept beside a benchmark's result, so intervals can be computed afterwards."""

from __future__ import annotations

from typing import Any

import numpy as np


def compact(predictions: list[dict[str, Any]], floor: float = 0.02) -> list[dict[str, Any]]:
    """Predictions as JSON, dropping boxes under ``floor`` (they move no reported metric)."""
    rows = []
    for p in predictions:
        keep = np.asarray(p["scores"]) >= floor
        rows.append({
            "image_id": p["image_id"],
            "boxes": [[round(v, 1) for v in box] for box in np.asarray(p["boxes"]).reshape(-1, 4)[keep].tolist()],
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
