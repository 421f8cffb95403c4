"""The detector with its frozen batch norms folded into the convolutions before them
(``detection.norm_folding``) against the same detector unfolded, on the CPU: training and
inference speed, the largest difference in the outputs, and the largest difference in the
backbone's gradients.

The two arms alternate round by round so that the machine's drift falls on both, both in the
layout a CPU runs them in (channels-last, ``model_files.to_device``):

- training (the ``baseline`` recipe from ImageNet weights, batch 4, FracAtlas train): two copies of
  one freshly seeded detector, each with its own optimizer and loader, ``--train-seconds`` per round
  after a warm-up;
- the shipped detector (``Predictor``) on one X-ray at a time, as ``/predict`` runs for one task,
  and its scoring pass (predict, embed, the two TTA views, batch 8), as the scoring jobs run it, on
  the same decoded FracAtlas test X-rays in both arms.

    python -m benchmarks.norm_folding --data ../shared/data/fracatlas --images 32 --rounds 3 \\
        --train-seconds 120 --out benchmarks/reported/norm_folding_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import FrozenBatchNorm2d

from benchmarks.processor import processor
from fracture_al.detection.data import train_transforms
from fracture_al.detection.engine import LossLog, train_one_epoch
from fracture_al.detection.images import load_image
from fracture_al.detection.model_files import to_device
from fracture_al.detection.norm_folding import FoldedFrozenBatchNorm2d, NormFoldedConv2d, fold_frozen_norms
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

ARMS = ("unfolded", "folded")
CPU = torch.device("cpu")
TRAIN_WARM_UP_SECONDS = 20


def set_folded(model: torch.nn.Module, folded: bool) -> torch.nn.Module:
    """``model`` with its frozen batch norms folded (``fold_frozen_norms``) or back as torchvision
    builds them; the weights are the same objects either way."""
    if folded:
        fold_frozen_norms(model)
        return model
    for module in model.modules():
        if type(module) is NormFoldedConv2d:
            module.__class__ = torch.nn.Conv2d
        elif type(module) is FoldedFrozenBatchNorm2d:
            module.__class__ = FrozenBatchNorm2d
    return model


def training_speed(data: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Training images/s per round in each arm, and the largest gradient difference of their first
    step (same weights, same batch, same random draws of anchors and proposals)."""
    splits = load_splits(data)
    model_config, train_config = recipe("baseline").configs(splits["train"].coco,
                                                            train=TrainConfig(batch_size=4, workers=1))  # fmt: skip
    seed_everything(train_config.seed)
    folded, _ = initial_model(model_config, Initialisation())
    models = {"unfolded": set_folded(copy.deepcopy(folded), False), "folded": folded}
    arms = {}
    for name, model in models.items():
        to_device(model, model_config, CPU).train()
        optimizer, scheduler = make_optimizer(model, train_config, total_iterations=100_000)
        loader = make_loader(splits["train"].dataset(train_transforms()), train_config, CPU, shuffle=True, epoch=1)
        arms[name] = (model, optimizer, scheduler, loader)
    difference = gradient_difference(models, next(iter(arms["folded"][3])))

    def images_per_second(name: str, limit: float) -> float:
        model, optimizer, scheduler, loader = arms[name]
        started = time.monotonic()
        iterations = train_one_epoch(model, optimizer, scheduler, loader, CPU, 1, LossLog(), deadline=started + limit)
        return iterations * train_config.batch_size / (time.monotonic() - started)

    for name in ARMS:
        images_per_second(name, TRAIN_WARM_UP_SECONDS)
    per_round: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(rounds):
        for name in ARMS:
            per_round[name].append(round(images_per_second(name, seconds), 3))
    median = {name: statistics.median(values) for name, values in per_round.items()}
    return {
        "path": f"training the detector ({model_config.min_size} px, batch {train_config.batch_size}), "
                f"{seconds:g} s per round",
        "train_images_per_second_per_round": per_round,
        "speed_up": round(median["folded"] / median["unfolded"], 3),
        "largest_gradient_difference": difference,
    }  # fmt: skip


def gradient_difference(models: dict[str, torch.nn.Module], batch: tuple[tuple, tuple]) -> float:
    """The largest absolute difference between the arms' gradients, relative to the largest
    gradient, of one loss on the backbone and FPN (where the folding is; the detector's own losses
    sample anchors and proposals, and a rounding difference can change the draw): the sum of
    squares of every feature map on ``batch``'s X-rays. In float64, on copies: float32 rounds the
    two computations differently by about 1e-3 of the largest gradient."""
    gradients = {}
    for name, trained in models.items():
        model = copy.deepcopy(trained).double()
        tensors = model.transform([image.double() for image in batch[0]])[0].tensors
        sum((features**2).sum() for features in model.backbone(tensors).values()).backward()
        gradients[name] = {key: p.grad for key, p in model.backbone.named_parameters() if p.grad is not None}
    if not gradients["unfolded"] or gradients["folded"].keys() != gradients["unfolded"].keys():
        return float("inf")
    scale = max(float(g.abs().max()) for g in gradients["unfolded"].values())
    return max(float((gradients["folded"][key] - g).abs().max()) for key, g in gradients["unfolded"].items()) / scale


def timed_arms(model: torch.nn.Module, run: Callable[[], Any], rounds: int) -> dict[str, list[float]]:
    """Seconds of ``run`` per round in each arm, alternating, after one untimed call each."""
    seconds: dict[str, list[float]] = {name: [] for name in ARMS}
    for name in ARMS:
        set_folded(model, name == "folded")
        run()
    for _ in range(rounds):
        for name in ARMS:
            set_folded(model, name == "folded")
            started = time.perf_counter()
            run()
            seconds[name].append(round(time.perf_counter() - started, 3))
    set_folded(model, True)
    return seconds


def output_difference(model: torch.nn.Module, run: Callable[[], list[np.ndarray]]) -> float:
    """The largest absolute difference between ``run``'s outputs in the two arms."""
    set_folded(model, False)
    unfolded = run()
    set_folded(model, True)
    folded = run()
    if [a.shape for a in unfolded] != [b.shape for b in folded]:
        return float("inf")  # a box more or fewer
    return max((float(np.abs(a - b).max(initial=0.0)) for a, b in zip(unfolded, folded, strict=True)), default=0.0)


def summary(path: str, seconds: dict[str, list[float]], images: int, difference: float) -> dict[str, Any]:
    return {
        "path": path,
        "seconds_per_round": seconds,
        "xrays_per_second": {name: round(images / statistics.median(values), 3) for name, values in seconds.items()},
        "speed_up": round(statistics.median(seconds["unfolded"]) / statistics.median(seconds["folded"]), 3),
        "largest_output_difference": difference,
    }


def inference_paths(images: list[Image.Image], rounds: int) -> list[dict[str, Any]]:
    version = open_store(Path(tempfile.mkdtemp(prefix="folding-")) / "models").current()
    predictor = Predictor.from_version(version, CPU)

    def scoring_pass() -> None:
        predictor.predict(images, batch_size=8)
        predictor.embed(images, batch_size=8)
        predictor.predict_augmented(images, batch_size=8)

    def boxes_and_scores() -> list[np.ndarray]:
        predictions = predictor.predict(images[:8], batch_size=8)
        return [p.boxes for p in predictions] + [p.scores for p in predictions]

    difference = output_difference(predictor.model, boxes_and_scores)
    return [
        summary(f"shipped detector {version.name}, one X-ray per call",
                timed_arms(predictor.model, lambda: predictor.predict(images, batch_size=1), rounds), len(images),
                difference),
        summary(f"shipped detector {version.name}, scoring pass (predict, embed, 2 TTA views; batch 8)",
                timed_arms(predictor.model, scoring_pass, rounds), len(images), difference),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (train/test.json, images/).")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=120, help="Training per arm and round.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    training = training_speed(args.data, args.train_seconds, args.rounds)
    print(json.dumps(training), flush=True)
    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    images = [load_image(args.data / "images" / name) for name in names[: args.images]]
    inference = inference_paths(images, args.rounds)
    for result in inference:
        print(json.dumps(result), flush=True)
    report = {
        "command": f"python -m benchmarks.norm_folding --data {args.data} --images {args.images} "
                   f"--rounds {args.rounds} --train-seconds {args.train_seconds:g}"
                   + (f" --out {args.out}" if args.out else ""),
        "machine": processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "xrays": len(images),
        "training": training,
        "paths": inference,
    }  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
