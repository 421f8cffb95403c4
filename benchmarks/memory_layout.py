"""Training and inference on the CPU with the weights in channels-last (NHWC) memory against
PyTorch's default contiguous (NCHW) layout: speed, and for inference the largest difference in the
outputs, per network.

oneDNN, PyTorch's CPU backend for convolutions, computes in a blocked NHWC-like layout; contiguous
weights are reordered on every call (PyTorch's "Channels Last Memory Format" tutorial). Measured,
the two layouts alternating round by round so that the machine's drift falls on both:

- training the detector (the ``baseline`` recipe from ImageNet weights, batch 4, FracAtlas train):
  one model per layout, each trained for ``--train-seconds`` per round after a warm-up;
- the shipped detector (``Predictor``) on one X-ray at a time, as ``/predict`` runs for one task;
- the shipped detector's scoring pass (predict, embed, the two TTA views, batch 8), as the
  workers' scoring jobs run it;
- every segmentation and classification architecture (``MaskPredictor``, batch 8). Their speed
  does not depend on the weights, so they run untrained (no checkpoint needed).

Inference runs on the same decoded FracAtlas test X-rays in both layouts.

    python -m benchmarks.memory_layout --data ../shared/data/fracatlas --images 32 --rounds 3 \\
        --train-seconds 120 --out benchmarks/reported/memory_layout_cpu.json

``--mask-training STEPS`` measures instead every segmentation and classification architecture's
training steps (AdamW, its own loss, one batch of 8 FracAtlas train X-rays with their fracture
masks, from random weights), STEPS per layout and round:

    python -m benchmarks.memory_layout --data ../shared/data/fracatlas --mask-training 3 --rounds 2 \\
        --out benchmarks/reported/memory_layout_mask_training_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.processor import processor
from fracture_al.detection.data import train_transforms
from fracture_al.detection.engine import LossLog, train_one_epoch
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_data import MaskDataset
from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig, build_mask_model
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.mask_training import loss_function
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

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
CPU = torch.device("cpu")
TRAIN_WARM_UP_SECONDS = 20


def training_speed(data: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Training images/s per round in each layout: two copies of one freshly seeded detector, each
    with its own optimizer and loader, trained in turn (its momentum stays in its own layout)."""
    splits = load_splits(data)
    model_config, train_config = recipe("baseline").configs(splits["train"].coco,
                                                            train=TrainConfig(batch_size=4, workers=1))  # fmt: skip
    arms = {}
    for name, layout in LAYOUTS.items():
        seed_everything(train_config.seed)
        model, _ = initial_model(model_config, Initialisation())
        model.to(memory_format=layout)
        optimizer, scheduler = make_optimizer(model, train_config, total_iterations=100_000)
        loader = make_loader(splits["train"].dataset(train_transforms()), train_config, CPU, shuffle=True, epoch=1)
        arms[name] = (model, optimizer, scheduler, loader)

    def images_per_second(name: str, limit: float) -> float:
        model, optimizer, scheduler, loader = arms[name]
        started = time.monotonic()
        iterations = train_one_epoch(model, optimizer, scheduler, loader, CPU, 1, LossLog(), deadline=started + limit)
        return iterations * train_config.batch_size / (time.monotonic() - started)

    for name in arms:
        images_per_second(name, TRAIN_WARM_UP_SECONDS)
    per_round: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name in arms:
            per_round[name].append(round(images_per_second(name, seconds), 3))
    median = {name: statistics.median(values) for name, values in per_round.items()}
    return {
        "path": f"training the detector ({model_config.min_size} px, batch {train_config.batch_size}), "
                f"{seconds:g} s per round",
        "train_images_per_second_per_round": per_round,
        "speed_up": round(median["channels_last"] / median["contiguous"], 3),
    }  # fmt: skip


def timed_layouts(model: torch.nn.Module, run: Callable[[], Any], rounds: int) -> dict[str, list[float]]:
    """Seconds of ``run`` per round in each layout, alternating, after one untimed call each."""
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for layout in LAYOUTS.values():  # warm-up: oneDNN caches its kernels per layout
        model.to(memory_format=layout)
        run()
    for _ in range(rounds):
        for name, layout in LAYOUTS.items():
            model.to(memory_format=layout)
            started = time.perf_counter()
            run()
            seconds[name].append(round(time.perf_counter() - started, 3))
    return seconds


def outputs_in_layouts(model: torch.nn.Module, run: Callable[[], list[np.ndarray]]) -> float:
    """The largest absolute difference between ``run``'s outputs in the two layouts."""
    model.to(memory_format=torch.contiguous_format)
    contiguous = run()
    model.to(memory_format=torch.channels_last)
    channels_last = run()
    if [a.shape for a in contiguous] != [b.shape for b in channels_last]:
        return float("inf")  # a box more or fewer
    return max((float(np.abs(a - b).max(initial=0.0)) for a, b in zip(contiguous, channels_last, strict=True)),
               default=0.0)  # fmt: skip


def speed_up(seconds: dict[str, list[float]]) -> float:
    """How many times faster channels-last ran, from the median seconds of each layout."""
    return round(statistics.median(seconds["contiguous"]) / statistics.median(seconds["channels_last"]), 3)


def summary(path: str, seconds: dict[str, list[float]], images: int, difference: float) -> dict[str, Any]:
    return {
        "path": path,
        "seconds_per_round": seconds,
        "xrays_per_second": {name: round(images / statistics.median(values), 3) for name, values in seconds.items()},
        "speed_up": speed_up(seconds),
        "largest_output_difference": difference,
    }


def detector_paths(images: list[Image.Image], rounds: int) -> list[dict[str, Any]]:
    version = open_store(Path(tempfile.mkdtemp(prefix="layout-")) / "models").current()
    predictor = Predictor.from_version(version, CPU)

    def scoring_pass() -> None:
        predictor.predict(images, batch_size=8)
        predictor.embed(images, batch_size=8)
        predictor.predict_augmented(images, batch_size=8)

    def boxes_and_scores() -> list[np.ndarray]:
        predictions = predictor.predict(images[:8], batch_size=8)
        return [p.boxes for p in predictions] + [p.scores for p in predictions]

    difference = outputs_in_layouts(predictor.model, boxes_and_scores)
    return [
        summary(f"shipped detector {version.name}, one X-ray per call",
                timed_layouts(predictor.model, lambda: predictor.predict(images, batch_size=1), rounds), len(images),
                difference),
        summary(f"shipped detector {version.name}, scoring pass (predict, embed, 2 TTA views; batch 8)",
                timed_layouts(predictor.model, scoring_pass, rounds), len(images), difference),
    ]  # fmt: skip


def mask_paths(images: list[Image.Image], rounds: int) -> list[dict[str, Any]]:
    results = []
    for name, arch in ARCHITECTURES.items():
        torch.manual_seed(0)
        config = MaskModelConfig(task=arch.task, arch=name)
        predictor = MaskPredictor(build_mask_model(config, imagenet=False), config, CPU, "untrained")

        def probabilities(predictor: MaskPredictor = predictor) -> list[np.ndarray]:
            return [np.array([p.probability for p in predictor.predict(images[:8], batch_size=8)])]

        difference = outputs_in_layouts(predictor.model, probabilities)
        seconds = timed_layouts(predictor.model, lambda predictor=predictor: predictor.predict(images, batch_size=8),
                                rounds)  # fmt: skip
        results.append(summary(f"{name} ({arch.task}), batch 8", seconds, len(images), difference))
        print(json.dumps(results[-1]), flush=True)
    return results


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_of: Callable[..., torch.Tensor],
                batch: tuple[torch.Tensor, ...], steps: int) -> None:  # fmt: skip
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model(batch[0]), *batch[1:]).backward()
        optimizer.step()


def mask_training_paths(data: Path, steps: int, rounds: int) -> list[dict[str, Any]]:
    train = load_splits(data)["train"]
    results = []
    for name, arch in ARCHITECTURES.items():
        config = MaskModelConfig(task=arch.task, arch=name)
        dataset = MaskDataset(train.coco, train.image_dir, config.image_size, train=False)
        images, masks, labels = (torch.stack(items) for items in zip(*(dataset[i] for i in range(8)), strict=True))
        torch.manual_seed(0)
        model = build_mask_model(config, imagenet=False).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=arch.lr)
        loss_of = loss_function(config)

        seconds = timed_layouts(model, partial(train_steps, model, optimizer, loss_of, (images, masks, labels), steps),
                                rounds)  # fmt: skip
        results.append({"path": f"training {name} ({arch.task}), {steps} steps of batch 8",
                        "seconds_per_round": seconds, "speed_up": speed_up(seconds)})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (test.json, images/).")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=120, help="Training per layout and round.")
    parser.add_argument("--mask-training", type=int, metavar="STEPS", default=0,
                        help="Measure the mask networks' training steps instead.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.mask_training:
        write(args.out, {
            "command": f"python -m benchmarks.memory_layout --data {args.data} --mask-training {args.mask_training} "
                       f"--rounds {args.rounds}" + (f" --out {args.out}" if args.out else ""),
            "machine": processor(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "paths": mask_training_paths(args.data, args.mask_training, args.rounds),
        })  # fmt: skip
        return

    training = training_speed(args.data, args.train_seconds, args.rounds)
    print(json.dumps(training), flush=True)
    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    images = [load_image(args.data / "images" / name) for name in names[: args.images]]
    detector = detector_paths(images, args.rounds)
    for result in detector:
        print(json.dumps(result), flush=True)
    report = {
        "command": f"python -m benchmarks.memory_layout --data {args.data} --images {args.images} "
                   f"--rounds {args.rounds} --train-seconds {args.train_seconds:g}"
                   + (f" --out {args.out}" if args.out else ""),
        "machine": processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "xrays": len(images),
        "training": training,
        "paths": detector + mask_paths(images, args.rounds),
    }  # fmt: skip
    write(args.out, report)


def write(out: Path | None, report: dict[str, Any]) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
