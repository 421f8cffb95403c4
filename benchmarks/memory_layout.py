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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.alternating import (
    CPU,
    Arms,
    output_difference,
    shipped_detector_paths,
    speed_up,
    summary,
    timed_arms,
    training_speed,
)
from benchmarks.processor import processor
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_data import MaskDataset
from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig, build_mask_model
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.mask_training import loss_function
from fracture_al.detection.training import load_splits

LAYOUTS: Arms = {
    "contiguous": partial(torch.nn.Module.to, memory_format=torch.contiguous_format),
    "channels_last": partial(torch.nn.Module.to, memory_format=torch.channels_last),
}


def mask_paths(images: list[Image.Image], rounds: int) -> list[dict[str, Any]]:
    results = []
    for name, arch in ARCHITECTURES.items():
        torch.manual_seed(0)
        config = MaskModelConfig(task=arch.task, arch=name)
        predictor = MaskPredictor(build_mask_model(config, imagenet=False), config, CPU, "untrained")

        def probabilities(predictor: MaskPredictor = predictor) -> list[np.ndarray]:
            return [np.array([p.probability for p in predictor.predict(images[:8], batch_size=8)])]

        difference = output_difference(predictor.model, LAYOUTS, probabilities)
        seconds = timed_arms(predictor.model, LAYOUTS,
                             lambda predictor=predictor: predictor.predict(images, batch_size=8), rounds)  # fmt: skip
        results.append(summary(f"{name} ({arch.task}), batch 8", seconds, len(images), difference, LAYOUTS))
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

        seconds = timed_arms(model, LAYOUTS,
                             partial(train_steps, model, optimizer, loss_of, (images, masks, labels), steps),
                             rounds)  # fmt: skip
        results.append({"path": f"training {name} ({arch.task}), {steps} steps of batch 8",
                        "seconds_per_round": seconds, "speed_up": speed_up(seconds, LAYOUTS)})  # fmt: skip
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

    training = training_speed(args.data, args.train_seconds, args.rounds, LAYOUTS)
    print(json.dumps(training), flush=True)
    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    images = [load_image(args.data / "images" / name) for name in names[: args.images]]
    detector = shipped_detector_paths(images, args.rounds, LAYOUTS)
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
