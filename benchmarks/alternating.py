"""Two ways of running the same network on the CPU ("arms"), measured round by round in turn so
that the machine's drift falls on both: what ``memory_layout`` and ``norm_folding`` share.

An arm is a name and a function that puts a model into that arm's state in place (a memory
layout, norms folded or not); the first arm is the baseline, the last the candidate, and every
``speed_up`` is how many times faster the candidate ran.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fracture_al.detection.data import train_transforms
from fracture_al.detection.engine import LossLog, train_one_epoch
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.recipes import recipe
from fracture_al.detection.shipped_model import open_store
from fracture_al.detection.training import (
    Initialisation,
    TrainConfig,
    initial_model,
    load_splits,
    make_loader,
    make_optimizer,
    seed_everything,
)

Arms = dict[str, Callable[[torch.nn.Module], Any]]
CPU = torch.device("cpu")
TRAIN_WARM_UP_SECONDS = 20


def speed_up(seconds: dict[str, list[float]], arms: Arms) -> float:
    """How many times faster the candidate ran, from the median seconds of each arm."""
    baseline, *_, candidate = arms
    return round(statistics.median(seconds[baseline]) / statistics.median(seconds[candidate]), 3)


def timed_arms(model: torch.nn.Module, arms: Arms, run: Callable[[], Any], rounds: int) -> dict[str, list[float]]:
    """Seconds of ``run`` per round in each arm, alternating, after one untimed call each (oneDNN
    caches its kernels per layout); ``model`` is left in the candidate's state."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for put in arms.values():
        put(model)
        run()
    for _ in range(rounds):
        for name, put in arms.items():
            put(model)
            started = time.perf_counter()
            run()
            seconds[name].append(round(time.perf_counter() - started, 3))
    return seconds


def output_difference(model: torch.nn.Module, arms: Arms, run: Callable[[], list[np.ndarray]]) -> float:
    """The largest absolute difference between ``run``'s outputs in the baseline and the candidate
    (``model`` is left in the candidate's state)."""
    baseline, *_, candidate = arms.values()
    baseline(model)
    expected = run()
    candidate(model)
    actual = run()
    if [a.shape for a in expected] != [b.shape for b in actual]:
        return float("inf")  # a box more or fewer
    return max((float(np.abs(a - b).max(initial=0.0)) for a, b in zip(expected, actual, strict=True)), default=0.0)


def summary(path: str, seconds: dict[str, list[float]], images: int, difference: float, arms: Arms) -> dict[str, Any]:
    return {
        "path": path,
        "seconds_per_round": seconds,
        "xrays_per_second": {name: round(images / statistics.median(values), 3) for name, values in seconds.items()},
        "speed_up": speed_up(seconds, arms),
        "largest_output_difference": difference,
    }


def shipped_detector_paths(images: list[Image.Image], rounds: int, arms: Arms) -> list[dict[str, Any]]:
    """The shipped detector (``Predictor``) on one X-ray at a time, as ``/predict`` runs for one
    task, and its scoring pass (predict, embed, the two TTA views, batch 8), as the scoring jobs run
    it, on the same decoded X-rays in every arm."""
    version = open_store(Path(tempfile.mkdtemp(prefix="alternating-")) / "models").current()
    predictor = Predictor.from_version(version, CPU)

    def scoring_pass() -> None:
        predictor.predict(images, batch_size=8)
        predictor.embed(images, batch_size=8)
        predictor.predict_augmented(images, batch_size=8)

    def boxes_and_scores() -> list[np.ndarray]:
        predictions = predictor.predict(images[:8], batch_size=8)
        return [p.boxes for p in predictions] + [p.scores for p in predictions]

    difference = output_difference(predictor.model, arms, boxes_and_scores)
    return [
        summary(f"shipped detector {version.name}, one X-ray per call",
                timed_arms(predictor.model, arms, lambda: predictor.predict(images, batch_size=1), rounds),
                len(images), difference, arms),
        summary(f"shipped detector {version.name}, scoring pass (predict, embed, 2 TTA views; batch 8)",
                timed_arms(predictor.model, arms, scoring_pass, rounds), len(images), difference, arms),
    ]  # fmt: skip


def training_speed(data: Path, seconds: float, rounds: int, arms: Arms) -> dict[str, Any]:
    """Training images/s per round in each arm (the ``baseline`` recipe from ImageNet weights,
    batch 4, FracAtlas train): one freshly seeded detector per arm, each with its own optimizer and
    loader (its momentum stays in its own state), trained in turn."""
    splits = load_splits(data)
    model_config, train_config = recipe("baseline").configs(splits["train"].coco,
                                                            train=TrainConfig(batch_size=4, workers=1))  # fmt: skip
    trainers = {}
    for name, put in arms.items():
        seed_everything(train_config.seed)
        model, _ = initial_model(model_config, Initialisation())
        put(model)
        optimizer, scheduler = make_optimizer(model, train_config, total_iterations=100_000)
        loader = make_loader(splits["train"].dataset(train_transforms()), train_config, CPU, shuffle=True, epoch=1)
        trainers[name] = (model, optimizer, scheduler, loader)

    def images_per_second(name: str, limit: float) -> float:
        model, optimizer, scheduler, loader = trainers[name]
        started = time.monotonic()
        iterations = train_one_epoch(model, optimizer, scheduler, loader, CPU, 1, LossLog(), deadline=started + limit)
        return iterations * train_config.batch_size / (time.monotonic() - started)

    for name in trainers:
        images_per_second(name, TRAIN_WARM_UP_SECONDS)
    per_round: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name in trainers:
            per_round[name].append(round(images_per_second(name, seconds), 3))
    baseline, *_, candidate = arms
    return {
        "path": f"training the detector ({model_config.min_size} px, batch {train_config.batch_size}), "
                f"{seconds:g} s per round",
        "train_images_per_second_per_round": per_round,
        "speed_up": round(statistics.median(per_round[candidate]) / statistics.median(per_round[baseline]), 3),
    }  # fmt: skip
