"""Training and evaluating the segmentation and classification networks, in the detector's shape
(detection/training.py): ``fit_masks`` trains with a validation pass per epoch, keeps the best
epoch, checkpoints every epoch so a killed run resumes; ``evaluate_masks`` gives the study's
metrics with intervals (detection/mask_metrics.py).

Losses: MONAI's ``DiceFocalLoss`` for masks (Dice for the overlap the study reports, focal for the
rare fracture pixels: a few hundred pixels in a 300,000-pixel X-ray) and binary cross-entropy for
the image-level classifiers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from fracture_al.detection.mask_data import MaskDataset
from fracture_al.detection.mask_metrics import MaskScores, mask_metrics, score_mask
from fracture_al.detection.mask_models import MaskModelConfig, architecture, build_mask_model
from fracture_al.detection.mask_predictor import at_size, predict_probabilities
from fracture_al.detection.model_files import to_device
from fracture_al.detection.training import (
    CHECKPOINT_FILE,
    DataSplit,
    WarmupCosine,
    cpu_copy,
    epochs_within_budget,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskTrainConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float | None = None  # None: the architecture's own (detection.mask_models)
    weight_decay: float = 1e-4
    workers: int = 0
    seed: int = 0
    threshold: float = 0.5  # a pixel (or an X-ray) at or above this probability is called fracture
    select_on: str | None = "dice_fractured"  # the validation metric the kept epoch is best at
    time_budget_minutes: float | None = None
    imagenet: bool = True  # seed the networks that can be from the ImageNet MobileNetV2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskTrainingOutcome:
    model: torch.nn.Module
    model_config: MaskModelConfig
    train_config: MaskTrainConfig
    iterations: list[dict[str, float]]  # the loss of every step
    epochs: list[dict[str, Any]]  # per epoch: mean loss and validation metrics
    selected_epoch: int | None
    seconds: float
    images_seen: int

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds else 0.0


def loss_function(config: MaskModelConfig) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, masks, labels)`` for the network's task."""
    if config.task == "classification":
        return lambda logits, masks, labels: F.binary_cross_entropy_with_logits(logits.squeeze(1), labels)
    from monai.losses import DiceFocalLoss

    dice_focal = DiceFocalLoss(sigmoid=True)
    return lambda logits, masks, labels: dice_focal(logits, masks)


def make_mask_loader(dataset: MaskDataset, config: MaskTrainConfig, *, shuffle: bool, epoch: int = 0) -> DataLoader:
    # A generator seeded per epoch: a resumed run sees the batches an uninterrupted one would.
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=shuffle, num_workers=config.workers,
                      generator=generator, drop_last=False)  # fmt: skip


def fit_masks(
    model_config: MaskModelConfig,
    train_config: MaskTrainConfig,
    train_split: DataSplit,
    val_split: DataSplit | None,
    run_dir: Path,
    *,
    device: torch.device,
    weights_dirs: tuple[Path, ...] = (),
    warm_start: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> MaskTrainingOutcome:
    """Train a segmentation or classification network; see the module's docstring. ``warm_start``: a
    saved model of the same config to continue from (a retrain), instead of ImageNet or random."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(train_config.seed)
    imagenet = train_config.imagenet and warm_start is None
    model = build_mask_model(model_config, imagenet=imagenet, search_dirs=weights_dirs)
    if warm_start is not None:
        model.load_state_dict(torch.load(warm_start, map_location="cpu", weights_only=True)["model"])
    to_device(model, model_config, device)
    lr = train_config.lr or architecture(model_config.arch).lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train_config.weight_decay)
    schedule = WarmupCosine(0, max(1, train_config.epochs))  # stepped once per epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_of = loss_function(model_config)
    train_set = MaskDataset(train_split.coco, train_split.image_dir, model_config.image_size, train=True)
    iterations: list[dict[str, float]] = []
    epochs: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "value": float("-inf"), "state": None}
    start = 1
    checkpoint = run_dir / CHECKPOINT_FILE
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})  # the plan is this config's
        iterations, epochs, best, start = state["iterations"], state["epochs"], state["best"], state["epoch"] + 1
        log.info("resumed from %s at epoch %d", checkpoint, start)

    deadline = time.monotonic() + 60 * train_config.time_budget_minutes if train_config.time_budget_minutes else None
    started, images_seen = time.monotonic(), 0
    epoch = start
    while epoch <= schedule.total:
        model.train()
        losses = []
        loader = make_mask_loader(train_set, train_config, shuffle=True, epoch=epoch)
        for images, masks, labels in tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False):
            loss = loss_of(model(images.to(device)), masks.to(device), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
            iterations.append({"epoch": epoch, "loss": losses[-1]})
            images_seen += len(images)
            if deadline is not None and time.monotonic() >= deadline:
                break
        scheduler.step()
        summary: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None}
        if val_split is not None:
            metrics, _ = evaluate_masks(model, model_config, val_split, train_config, device)
            summary.update({name: value["value"] for name, value in metrics.items()})
        epochs.append(summary)
        chosen = summary.get(train_config.select_on) if train_config.select_on else None
        if chosen is not None and chosen > best["value"]:
            best = {"epoch": epoch, "value": chosen, "state": cpu_copy(model)}
        if deadline is not None:
            now = time.monotonic()
            schedule.shorten(epochs_within_budget(schedule.total, epoch, (now - started) / (epoch - start + 1),
                                                  deadline - now))  # fmt: skip
        save_checkpoint(checkpoint, model, optimizer, scheduler, epoch, iterations, epochs, best)
        if on_epoch is not None:
            on_epoch(summary)
        if deadline is not None and time.monotonic() >= deadline:
            log.info("time budget of %s min reached after epoch %d", train_config.time_budget_minutes, epoch)
            break
        epoch += 1
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return MaskTrainingOutcome(model.eval(), model_config, train_config, iterations, epochs, best["epoch"],
                               time.monotonic() - started, images_seen)  # fmt: skip


def evaluate_masks(
    model: torch.nn.Module,
    model_config: MaskModelConfig,
    split: DataSplit,
    train_config: MaskTrainConfig,
    device: torch.device,
    *,
    resamples: int = 200,
) -> tuple[dict[str, dict[str, Any]], list[MaskScores]]:
    """The study's metrics on the split's X-rays, masks compared at each X-ray's own size."""
    model.eval()
    coco = split.coco
    dataset = MaskDataset(coco, split.image_dir, model_config.image_size, train=False)
    scores: list[MaskScores] = []
    index = 0
    for images, _, _ in make_mask_loader(dataset, train_config, shuffle=False):
        maps, probabilities = predict_probabilities(model, images.to(device))
        for offset in range(len(images)):
            record, truth = coco.images[index], dataset.true_mask(index)
            if maps is not None:
                full = at_size(maps[offset], tuple(truth.shape))
                scores.append(score_mask(record.image_id, full, truth.numpy(), threshold=train_config.threshold))
            else:
                scores.append(MaskScores(record.image_id, bool(truth.any() or record.boxes), None, None, None,
                                         float(probabilities[offset])))  # fmt: skip
            index += 1
    return mask_metrics(scores, threshold=train_config.threshold, resamples=resamples), scores
