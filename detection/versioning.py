"""Turning a finished training run into a model version: weights, config, metrics and plots."""

from __future__ import annotations

import contextlib
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fracture_al.detection.image_score import ProbabilityCalibration
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.mask_training import MaskTrainingOutcome, evaluate_masks
from fracture_al.detection.masks import polygons_to_mask
from fracture_al.detection.model_files import save_model
from fracture_al.detection.plots import MASK_CURVES, plot_losses, plot_mask_grid, plot_prediction_grid, plot_validation
from fracture_al.detection.store import MODEL_FILE, ModelStore, ModelVersion, write_json
from fracture_al.detection.training import DataSplit, TrainingOutcome, evaluate_split

GRID_IMAGES = 8


def publish_outcome(
    store: ModelStore,
    outcome: TrainingOutcome,
    *,
    test_split: DataSplit | None,
    data_sources: dict[str, Any],
    make_current: bool = True,
) -> ModelVersion:
    """Evaluate on the test split, write everything into staging, then publish in one rename."""
    with staged_outcome(store, outcome, test_split=test_split, data_sources=data_sources) as staged:
        return store.publish(staged, make_current=make_current)


@contextlib.contextmanager
def staged_outcome(
    store: ModelStore,
    outcome: TrainingOutcome,
    *,
    test_split: DataSplit | None,
    data_sources: dict[str, Any],
    validation_metrics: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """A staging folder holding the complete version (weights, config, metrics, plots); the caller
    publishes or rejects it before the block ends, else it is removed. ``validation_metrics``: the
    finished model's, when it was validated after training (the retrain gate) rather than per epoch."""
    with store.stage() as staged:
        save_model(outcome.model, outcome.model_config, staged / MODEL_FILE)
        metrics = {
            "validation": validation_metrics or selected_epoch(outcome),
            "train_images_per_second": outcome.images_per_second,
            "train_seconds": outcome.seconds,
        }
        plots = staged / "plots"
        plot_losses(outcome.loss_log.iterations, plots / "losses.png")
        plot_validation(outcome.epochs, plots / "validation.png")
        if test_split is not None:
            test_metrics, predictions = evaluate_split(
                outcome.model,
                test_split,
                outcome.train_config,
                outcome.device,
                flip_tta=outcome.model_config.flip_tta,
                description="test",
                # The call on test is the one served: through the calibration fitted on validation.
                calibration=ProbabilityCalibration.from_dict(metrics["validation"].get("probability_calibration")),
            )
            metrics["test"] = test_metrics
            plot_prediction_grid(grid_samples(test_split, predictions), plots / "test_predictions.png")
        write_json(staged / "metrics.json", metrics)
        write_json(staged / "history.json", {"iterations": outcome.loss_log.iterations, "epochs": outcome.epochs})
        write_json(
            staged / "config.json",
            {
                "model": outcome.model_config.to_dict(),
                "train": outcome.train_config.to_dict(),
                "data": data_sources,
                "pretrained_from": outcome.pretrained_from,
                "device": str(outcome.device),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        )
        yield staged
        shutil.rmtree(staged, ignore_errors=True)  # neither published nor rejected


def selected_epoch(outcome: TrainingOutcome | MaskTrainingOutcome) -> dict[str, Any]:
    """The summary of the epoch whose weights were kept (the best validated one, else the last)."""
    chosen = [epoch for epoch in outcome.epochs if epoch.get("epoch") == outcome.selected_epoch]
    return (chosen or outcome.epochs[-1:] or [{}])[0]


def grid_samples(split: DataSplit, predictions: list[dict[str, Any]]) -> list:
    """Half X-rays with fractures, half without, in file order, so every version shows the same."""
    by_id = {prediction["image_id"]: prediction for prediction in predictions}
    positives = [record for record in split.coco.images if record.boxes][: GRID_IMAGES // 2]
    negatives = [record for record in split.coco.images if not record.boxes]
    chosen = positives + negatives[: GRID_IMAGES - len(positives)]
    return [
        (load_image(split.image_dir / record.file_name), np.array(record.boxes).reshape(-1, 4), by_id[record.image_id])
        for record in chosen
        if record.image_id in by_id
    ]


def data_sources(**splits: DataSplit | None) -> dict[str, Any]:
    """Where each split came from, for the version's config.json."""
    return {
        name: {"annotations": str(split.coco.path), "images": str(split.image_dir), "count": len(split.coco.images)}
        for name, split in splits.items()
        if split is not None
    }


def publish_mask_outcome(
    store: ModelStore,
    outcome: MaskTrainingOutcome,
    *,
    test_split: DataSplit | None,
    data_sources: dict[str, Any],
    device: torch.device,
    make_current: bool = True,
) -> ModelVersion:
    """Evaluate on the test split, stage everything, then publish in one rename."""
    with staged_mask_outcome(store, outcome, test_split=test_split, data_sources=data_sources, device=device) as staged:
        return store.publish(staged, make_current=make_current)


@contextlib.contextmanager
def staged_mask_outcome(
    store: ModelStore,
    outcome: MaskTrainingOutcome,
    *,
    test_split: DataSplit | None,
    data_sources: dict[str, Any],
    device: torch.device,
    validation_metrics: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """A segmentation or classification version, as ``staged_outcome`` stages a detector's: the
    study's test metrics with bootstrap 95% intervals, and its three pictures; the caller publishes
    or rejects it before the block ends, else it is removed."""
    with store.stage() as staged:
        save_model(outcome.model, outcome.model_config, staged / MODEL_FILE)
        metrics: dict[str, Any] = {"validation": validation_metrics or selected_epoch(outcome),
                                   "train_seconds": outcome.seconds,
                                   "train_images_per_second": outcome.images_per_second}  # fmt: skip
        plots = staged / "plots"
        plot_losses(outcome.iterations, plots / "losses.png", names={"loss": "training loss"})
        plot_validation(outcome.epochs, plots / "validation.png", curves=MASK_CURVES)
        if test_split is not None:
            intervals, _ = evaluate_masks(outcome.model, outcome.model_config, test_split, outcome.train_config, device,
                                          resamples=1000)  # fmt: skip
            metrics["test"] = {name: interval["value"] for name, interval in intervals.items()}
            metrics["test_intervals"] = intervals
            plot_mask_grid(mask_grid_samples(test_split, outcome, device), plots / "test_predictions.png",
                           threshold=outcome.train_config.threshold)  # fmt: skip
        write_json(staged / "metrics.json", metrics)
        write_json(staged / "history.json", {"iterations": outcome.iterations, "epochs": outcome.epochs})
        write_json(staged / "config.json", {
            "model": outcome.model_config.to_dict(), "train": outcome.train_config.to_dict(), "data": data_sources,
            "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        })  # fmt: skip
        yield staged
        shutil.rmtree(staged, ignore_errors=True)  # neither published nor rejected


def mask_grid_samples(split: DataSplit, outcome: MaskTrainingOutcome, device: torch.device) -> list:
    """Half fractured X-rays, half healthy, in file order: image, true mask, predicted map, probability."""
    positives = [record for record in split.coco.images if record.polygons][: GRID_IMAGES // 2]
    negatives = [record for record in split.coco.images if not record.boxes and not record.polygons]
    chosen = positives + negatives[: GRID_IMAGES - len(positives)]
    images = [load_image(split.image_dir / record.file_name) for record in chosen]
    predictor = MaskPredictor(outcome.model, outcome.model_config, device, "candidate")
    return [
        (image, polygons_to_mask(record.polygons, image.height, image.width), prediction.probabilities,
         prediction.probability)
        for record, image, prediction in zip(chosen, images, predictor.predict(images), strict=True)
    ]  # fmt: skip
