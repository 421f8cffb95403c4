"""Training a detector end to end: data loaders, optimiser, schedule, per-epoch validation and
resumable checkpoints. Publishing the result is :mod:`detection.versioning`'s job."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from fracture_al.detection.data import CocoDetection, CocoFile, collate, eval_transforms, train_transforms
from fracture_al.detection.devices import cpu_has_amx
from fracture_al.detection.engine import LossLog, predict_batches, train_one_epoch
from fracture_al.detection.evaluation import evaluate_predictions
from fracture_al.detection.image_score import ProbabilityCalibration
from fracture_al.detection.model import ModelConfig, build_model, load_pretrained
from fracture_al.detection.model_files import to_device

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 100
    workers: int = 1
    # Minutes the training may take: after each epoch the schedule is shortened to the epochs the
    # remaining time holds (so the learning rate still anneals to zero), and the iteration that
    # crosses the budget is the last; None trains every epoch.
    time_budget_minutes: float | None = None
    image_threshold: float = 0.5
    seed: int = 0
    # Share of each epoch's draws that are X-rays with a fracture (sampled with replacement);
    # None keeps the data's own mix.
    positive_fraction: float | None = None
    # Exponential moving average of the weights, evaluated and saved instead of the raw ones;
    # None trains without it.
    ema_decay: float | None = None
    # Validation metric whose best epoch is kept (model selection on val); None keeps the last.
    select_on: str | None = None
    # On a CPU: forward passes under bfloat16 autocast. It buys speed, hence epochs within a time
    # budget, only where the CPU has AMX (devices.cpu_has_amx); validation and the saved model stay
    # float32. GPUs use float16 AMP.
    cpu_bf16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DataSplit:
    """A COCO file and the folder its ``file_name`` entries are relative to."""

    coco: CocoFile
    image_dir: Path

    @classmethod
    def load(cls, annotations: str | Path, image_dir: str | Path, class_names: list[str] | None = None) -> DataSplit:
        return cls(CocoFile(annotations, class_names), Path(image_dir))

    def dataset(self, transforms: Callable | None) -> CocoDetection:
        return CocoDetection(self.coco, self.image_dir, transforms)


SPLIT_NAMES = ("train", "val", "test")


def load_splits(
    data_dir: str | Path, image_dir: str | Path | None = None, class_names: Sequence[str] | None = None
) -> dict[str, DataSplit | None]:
    """A dataset folder: ``train.json`` (required), ``val.json`` and ``test.json`` (optional), all
    naming images under ``images/`` (the FracAtlas layout, and what the exporters write).

    ``class_names`` (a model's, to fine-tune it) fixes the label order; a split holding classes
    outside them raises ``ValueError`` saying how to map them."""
    data_dir = Path(data_dir)
    image_dir = Path(image_dir) if image_dir else data_dir / "images"
    if not (data_dir / "train.json").is_file():
        raise FileNotFoundError(f"{data_dir} has no train.json (expected train/val/test.json and images/)")
    splits: dict[str, DataSplit | None] = {}
    class_names = list(class_names) if class_names else None
    for name in SPLIT_NAMES:
        path = data_dir / f"{name}.json"
        splits[name] = DataSplit.load(path, image_dir, class_names) if path.is_file() else None
        if splits[name] is not None:
            class_names = splits[name].coco.class_names  # every split uses train's label order
    return splits


@dataclass
class Initialisation:
    """Where the starting weights come from: a saved model file (warm start) or pretrained ones."""

    model_file: Path | None = None
    weights_file: Path | None = None
    weights_dirs: list[Path] = field(default_factory=list)
    allow_download: bool = False


@dataclass
class TrainingOutcome:
    model: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    loss_log: LossLog
    epochs: list[dict[str, Any]]
    device: torch.device
    pretrained_from: str | None
    seconds: float
    images_seen: int
    selected_epoch: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds else 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(
    dataset: Dataset, config: TrainConfig, device: torch.device, *, shuffle: bool, epoch: int = 0
) -> DataLoader:
    # A generator seeded per epoch fixes the order and the workers' augmentation seeds, so a
    # resumed run sees the same batches as an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    sampler = None
    if shuffle and config.positive_fraction is not None:
        sampler = positive_sampler(dataset, config.positive_fraction, generator)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )


def positive_sampler(dataset: Dataset, fraction: float, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws X-rays with a fracture ``fraction`` of the time (an epoch keeps its length)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"positive_fraction must lie strictly between 0 and 1, not {fraction}")
    positive = torch.tensor([bool(record.boxes) for record in dataset.coco.images])
    count = int(positive.sum())
    if count in (0, len(positive)):  # one kind only: nothing to rebalance
        weights = torch.ones(len(positive), dtype=torch.float64)
    else:
        weights = torch.where(positive, fraction / count, (1.0 - fraction) / (len(positive) - count)).double()
    return WeightedRandomSampler(weights, num_samples=len(positive), replacement=True, generator=generator)


def weight_average(model: torch.nn.Module, config: TrainConfig) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (frozen BatchNorm has nothing to average)."""
    if config.ema_decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))


class WarmupCosine:
    """Learning-rate factor per iteration: linear warm-up from 1% over ``warmup`` iterations, then
    a cosine to zero at ``total``. An object rather than a closure so that the scheduler's state
    (and a shortened ``total``) is saved in checkpoints and restored on resume."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, max(total, warmup + 1)

    def shorten(self, total: int) -> None:
        """End the cosine at ``total``; the warm-up keeps to at most a quarter of it."""
        self.warmup = min(self.warmup, max(1, total // 4)) if self.warmup else 0
        self.total = max(total, self.warmup + 1)

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup:
            return 0.01 + 0.99 * iteration / self.warmup
        progress = min(1.0, (iteration - self.warmup) / (self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_iterations: int):
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    warmup = min(config.warmup_iterations, max(1, total_iterations // 4))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total_iterations))
    return optimizer, scheduler


# Each epoch still to come is planned as this much slower than the ones measured: an epoch that
# runs slower (other processes, a different mix of X-ray sizes) must not meet the deadline before
# the learning rate has annealed.
EPOCH_TIME_SLACK = 1.1


def epochs_within_budget(planned: int, done: int, seconds_per_epoch: float, seconds_left: float) -> int:
    """The epochs a run can have in all when each takes ``seconds_per_epoch`` (training and
    validation, with ``EPOCH_TIME_SLACK``) and ``seconds_left`` remain after ``done`` of them: never
    more than ``planned``, never fewer than ``done``."""
    affordable = int(seconds_left // (seconds_per_epoch * EPOCH_TIME_SLACK)) if seconds_per_epoch > 0 else planned
    return max(done, min(planned, done + affordable))


def prepare_for_training(
    model: torch.nn.Module, model_config: ModelConfig, config: TrainConfig, device: torch.device
) -> bool:
    """Put ``model`` on ``device`` to train, in the layout it trains fastest in there
    (:func:`~fracture_al.detection.model_files.to_device`: channels-last on a CPU, 1.22x on an
    Intel Xeon, 1.07-1.11x on an AMD EPYC without AVX-512); returns whether it trains under
    bfloat16 autocast (``config.cpu_bf16`` on a CPU, refused without AMX, where it trains slower)."""
    if config.cpu_bf16 and device.type == "cpu" and not cpu_has_amx():
        raise ValueError("cpu_bf16 needs a CPU with AMX (bfloat16 matrix hardware); on this one bfloat16 "
                         "trains slower than float32")
    to_device(model, model_config, device)
    return config.cpu_bf16 and device.type == "cpu"


def initial_model(model_config: ModelConfig, init: Initialisation) -> tuple[torch.nn.Module, str | None]:
    """A fresh detector, warm-started from a saved model or seeded from pretrained weights."""
    model = build_model(model_config)
    if init.model_file is not None:
        saved = torch.load(init.model_file, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        return model, str(init.model_file)
    if init.weights_file is not None and str(init.weights_file).lower() == "none":
        return model, None
    path = load_pretrained(
        model,
        model_config,
        weights_file=init.weights_file,
        search_dirs=init.weights_dirs,
        allow_download=init.allow_download,
    )
    return model, str(path)


def fit(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_split: DataSplit,
    val_split: DataSplit | None,
    run_dir: Path,
    *,
    device: torch.device,
    init: Initialisation,
    resume: bool = False,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingOutcome:
    """Train, validating after each epoch and checkpointing to ``run_dir`` so a killed run resumes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(train_config.seed)
    model, pretrained_from = initial_model(model_config, init)
    bf16 = prepare_for_training(model, model_config, train_config, device)

    train_set = train_split.dataset(train_transforms())
    iterations_per_epoch = -(-len(train_set) // train_config.batch_size)
    optimizer, scheduler = make_optimizer(model, train_config, train_config.epochs * iterations_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    averaged = weight_average(model, train_config)
    loss_log, epochs, start_epoch = LossLog(), [], 1
    best: dict[str, Any] = {"epoch": None, "value": float("-inf"), "state": None}

    checkpoint_path = run_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # The schedule's plan is this run's config (a resumed run gets a fresh time budget), not the
        # interrupted run's: only the iteration count is restored.
        scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if averaged is not None and state.get("averaged"):
            averaged.load_state_dict(state["averaged"])
        best = state.get("best") or best
        loss_log, epochs, start_epoch = LossLog(state["iterations"]), state["epochs"], state["epoch"] + 1
        log.info("resumed from %s at epoch %d", checkpoint_path, start_epoch)

    served = averaged.module if averaged is not None else model  # what is validated and published
    deadline = time.monotonic() + 60 * train_config.time_budget_minutes if train_config.time_budget_minutes else None
    started, images_seen = time.monotonic(), 0
    planned, epoch = scheduler.lr_lambdas[0].total // iterations_per_epoch, start_epoch
    while epoch <= planned:
        torch.manual_seed(train_config.seed * 1000 + epoch)
        loader = make_loader(train_set, train_config, device, shuffle=True, epoch=epoch)
        iterations = train_one_epoch(
            model,
            optimizer,
            scheduler,
            loader,
            device,
            epoch,
            loss_log,
            scaler=scaler,
            bf16=bf16,
            averaged=averaged,
            on_iteration=on_iteration,
            deadline=deadline,
        )
        images_seen += min(iterations * train_config.batch_size, len(train_set))
        summary = {"epoch": epoch, "iterations": iterations, **loss_log.epoch_means(epoch)}
        if val_split is not None:
            metrics, _ = evaluate_split(
                served, val_split, train_config, device, flip_tta=model_config.flip_tta, description=f"validate {epoch}"
            )
            summary.update(metrics)
        epochs.append(summary)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
        if train_config.select_on and (summary.get(train_config.select_on) or 0.0) > best["value"]:
            best = {"epoch": epoch, "value": summary.get(train_config.select_on) or 0.0, "state": cpu_copy(served)}
        if deadline is not None:
            now = time.monotonic()
            fitted = epochs_within_budget(planned, epoch, (now - started) / (epoch - start_epoch + 1), deadline - now)
            if fitted < planned:
                log.info("%s min budget: the schedule is shortened to %d epochs", train_config.time_budget_minutes,
                         fitted)  # fmt: skip
                planned = fitted
                scheduler.lr_lambdas[0].shorten(max(planned * iterations_per_epoch, scheduler.last_epoch + 1))
        save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch, loss_log.iterations, epochs, best,
                        scaler=scaler, averaged=averaged)  # fmt: skip
        if on_epoch is not None:
            on_epoch(summary)
        if deadline is not None and time.monotonic() >= deadline:
            log.info("time budget of %s min reached after epoch %d", train_config.time_budget_minutes, epoch)
            break
        epoch += 1

    if best["state"] is not None:
        served.load_state_dict(best["state"])
    return TrainingOutcome(
        model=served.eval(),
        model_config=model_config,
        train_config=train_config,
        loss_log=loss_log,
        epochs=epochs,
        device=device,
        pretrained_from=pretrained_from,
        seconds=time.monotonic() - started,
        images_seen=images_seen,
        selected_epoch=best["epoch"],
    )


def cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights copied off the device: the best epoch's, kept while training goes on."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def evaluate_split(
    model: torch.nn.Module,
    split: DataSplit,
    config: TrainConfig,
    device: torch.device,
    *,
    flip_tta: bool = False,
    description: str = "evaluate",
    calibration: ProbabilityCalibration | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``model`` on ``split``, and the predictions they were computed from; with the
    version's ``calibration`` when ``split`` is not the one it is fitted on
    (:func:`evaluation.evaluate_predictions`)."""
    loader = make_loader(split.dataset(eval_transforms()), config, device, shuffle=False)
    predictions = predict_batches(model, loader, device, flip_tta=flip_tta, description=description)
    metrics = evaluate_predictions(split.coco, predictions, image_threshold=config.image_threshold,
                                   calibration=calibration)  # fmt: skip
    return metrics, predictions


def save_checkpoint(
    path: Path, model, optimizer, scheduler, epoch: int, iterations: list, epochs: list, best: dict, *,
    scaler=None, averaged=None,
) -> None:
    """Everything a killed run resumes from (the detector's and the mask networks' runs alike)."""
    temporary = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "averaged": averaged.state_dict() if averaged is not None else None,
            "epoch": epoch,
            "iterations": iterations,
            "epochs": epochs,
            "best": best,
        },
        temporary,
    )
    os.replace(temporary, path)  # a kill mid-save leaves the previous checkpoint intact
