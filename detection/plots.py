"""The three pictures saved with every model version."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # workers and servers have no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from fracture_al.detection.engine import LOSS_NAMES

VALIDATION_CURVES = {"mAP50": "mAP@50", "mAP75": "mAP@75", "mAP": "mAP@[.5:.95]", "auroc": "image AUROC"}


def plot_losses(iterations: Sequence[dict[str, float]], path: Path, names: dict[str, str] = LOSS_NAMES) -> Path:
    """One panel per loss (``names``: key -> title): every iteration faintly, a moving average on top."""
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    axes = axes[0]
    steps = np.arange(1, len(iterations) + 1)
    window = max(1, len(iterations) // 25)
    for axis, (key, title) in zip(axes, names.items(), strict=True):
        values = np.array([row[key] for row in iterations])
        axis.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        if len(values) >= window:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=1.8)
        axis.set_title(title)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    figure.tight_layout()
    return _save(figure, path)


def plot_validation(epochs: Sequence[dict[str, Any]], path: Path, curves: dict[str, str] = VALIDATION_CURVES) -> Path:
    """Validation metrics (``curves``: key -> label) after each epoch."""
    figure, axis = plt.subplots(figsize=(6, 4))
    numbers = [row["epoch"] for row in epochs]
    for key, label in curves.items():
        values = [row.get(key) for row in epochs]
        if any(value is not None for value in values):
            axis.plot(numbers, [np.nan if v is None else v for v in values], marker="o", label=label)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("validation metric")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_prediction_grid(
    samples: Sequence[tuple[Image.Image, np.ndarray | None, dict[str, Any]]],
    path: Path,
    *,
    score_threshold: float = 0.3,
    columns: int = 4,
) -> Path:
    """Images with ground-truth boxes (green; None where unknown) and predicted boxes with scores (red)."""
    rows = max(1, math.ceil(len(samples) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, truth_boxes, prediction) in zip(axes.flat, samples, strict=False):
        axis.imshow(image, cmap="gray")
        for x1, y1, x2, y2 in np.asarray(truth_boxes if truth_boxes is not None else []).reshape(-1, 4):
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5))
        for (x1, y1, x2, y2), score in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(), strict=True):
            if score < score_threshold:
                continue
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", linewidth=1.5))
            axis.text(x1, y1 - 3, f"{score:.2f}", color="red", fontsize=8)
        best = max(prediction["scores"].tolist(), default=0.0)
        truth = f"{len(truth_boxes)} true box(es), " if truth_boxes is not None else ""
        axis.set_title(f"{truth}top score {best:.2f}", fontsize=9)
    figure.suptitle("green: ground truth, red: prediction", fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


def draw_overlay(
    image: Image.Image, boxes: np.ndarray, scores: np.ndarray, path: Path, *, score_threshold: float
) -> Path:
    """A single X-ray with its predicted boxes, for `fracture-al predict --overlay`."""
    prediction = {"boxes": np.asarray(boxes), "scores": np.asarray(scores)}
    return plot_prediction_grid([(image, None, prediction)], path, score_threshold=score_threshold, columns=1)


MASK_CURVES = {"dice_fractured": "Dice (fractured X-rays)", "jaccard_fractured": "Jaccard (fractured X-rays)",
               "dice_all": "Dice (all X-rays)", "auroc": "image AUROC"}  # fmt: skip


def plot_mask_grid(
    samples: Sequence[tuple[Image.Image, np.ndarray | None, np.ndarray | None, float]],
    path: Path,
    *,
    threshold: float = 0.5,
    columns: int = 4,
) -> Path:
    """X-rays with the true mask outlined (green; None where unknown) and the predicted one filled
    (red), titled with the X-ray's fracture probability. A classifier has no map: None."""
    rows = max(1, math.ceil(len(samples) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, truth, probabilities, probability) in zip(axes.flat, samples, strict=False):
        axis.imshow(image, cmap="gray")
        if probabilities is not None:
            predicted = np.ma.masked_where(probabilities < threshold, np.ones_like(probabilities))
            axis.imshow(predicted, cmap=ListedColormap(["red"]), alpha=0.45, vmin=0, vmax=1)
        if truth is not None and truth.any():
            axis.contour(truth.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        axis.set_title(f"fracture probability {probability:.2f}", fontsize=9)
    figure.suptitle("green: true outline, red: predicted mask", fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
