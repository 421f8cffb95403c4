"""One epoch of training and one pass of inference, after torchvision's references/detection."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fracture_al.detection.tta import detect

# torchvision's loss names, and the names people know them by.
LOSS_NAMES = {
    "loss": "total",
    "loss_classifier": "classifier",
    "loss_box_reg": "box regression",
    "loss_rpn_box_reg": "RPN box regression",
    "loss_objectness": "objectness",
}


@dataclass
class LossLog:
    """Per-iteration losses, in a form that is saved as JSON and plotted."""

    iterations: list[dict[str, float]] = field(default_factory=list)

    def append(self, epoch: int, iteration: int, lr: float, losses: dict[str, float]) -> None:
        self.iterations.append({"epoch": epoch, "iteration": iteration, "lr": lr, **losses})

    def epoch_means(self, epoch: int) -> dict[str, float]:
        rows = [row for row in self.iterations if row["epoch"] == epoch]
        return {name: sum(row[name] for row in rows) / len(rows) for name in LOSS_NAMES if rows}


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the checkpoint from the last good epoch is kept."""


def to_device(images: Iterable[torch.Tensor], targets: Iterable[dict], device: torch.device):
    non_blocking = device.type == "cuda"
    images = [image.to(device, non_blocking=non_blocking) for image in images]
    targets = [
        {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
    ]
    return images, targets


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    loss_log: LossLog,
    *,
    scaler: torch.amp.GradScaler | None = None,
    bf16: bool = False,
    averaged: torch.optim.swa_utils.AveragedModel | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
) -> int:
    """Train for one pass over ``loader`` (or until ``time.monotonic()`` passes ``deadline``);
    returns the number of iterations run. ``scaler`` turns on float16 AMP (a GPU), ``bf16`` bfloat16
    autocast (a CPU with AMX)."""
    model.train()
    autocast_dtype = torch.bfloat16 if bf16 else None  # None: the device's default, float16 on a GPU
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True)
    iterations = 0
    for images, targets in progress:
        if deadline is not None and time.monotonic() >= deadline:
            break
        images, targets = to_device(images, targets, device)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=scaler is not None or bf16):
            loss_dict = model(images, targets)
            total = sum(loss_dict.values())
        values = {"loss": total.item(), **{k: v.item() for k, v in loss_dict.items()}}
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(f"loss is {values['loss']} at epoch {epoch}: {values}")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        scheduler.step()
        if averaged is not None:
            averaged.update_parameters(model)

        lr = optimizer.param_groups[0]["lr"]
        loss_log.append(epoch, iterations, lr, values)
        iterations += 1
        progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2g}")
        if on_iteration is not None:
            on_iteration({"epoch": epoch, "iteration": iterations, "lr": lr, **values})
    return iterations


@torch.inference_mode()
def compute_losses(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean training losses over ``loader`` without updating anything.

    The detector only returns losses in train mode; its BatchNorm layers are frozen, so train mode
    changes nothing but that.
    """
    was_training = model.training
    model.train()
    sums: dict[str, float] = {}
    batches = 0
    for images, targets in loader:
        images, targets = to_device(images, targets, device)
        loss_dict = model(images, targets)
        values = {"loss": float(sum(loss_dict.values())), **{k: float(v) for k, v in loss_dict.items()}}
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        batches += 1
    model.train(was_training)
    return {name: total / batches for name, total in sums.items()}


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    flip_tta: bool = False,
    description: str = "predict",
) -> list[dict[str, Any]]:
    """Run the model over ``loader``; one ``{"image_id", "boxes", "scores", "labels"}`` per image."""
    model.eval()
    results = []
    for images, targets in tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True):
        images = [image.to(device) for image in images]
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            outputs = detect(model, images, flip_tta=flip_tta)
        for target, output in zip(targets, outputs, strict=True):
            results.append(
                {
                    "image_id": target["image_id"],
                    "boxes": output["boxes"].float().cpu(),
                    "scores": output["scores"].float().cpu(),
                    "labels": output["labels"].cpu(),
                }
            )
    return results
