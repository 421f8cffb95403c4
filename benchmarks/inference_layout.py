"""Inference on the CPU with the weights in channels-last (NHWC) memory against PyTorch's default
contiguous (NCHW) layout: seconds and the largest difference in the outputs, per network.

oneDNN, PyTorch's CPU backend for convolutions, computes in a blocked NHWC-like layout; contiguous
weights are reordered on every call (PyTorch's "Channels Last Memory Format" tutorial). Measured
paths, each on the same decoded FracAtlas test X-rays, the two layouts alternating round by round
so that the machine's drift falls on both:

- the shipped detector (``Predictor``) on one X-ray at a time, as ``/predict`` runs for one task;
- the shipped detector's scoring pass (predict, embed, the two TTA views, batch 8), as the
  workers' scoring jobs run it;
- every segmentation and classification architecture (``MaskPredictor``, batch 8). Their speed
  does not depend on the weights, so they run untrained (no checkpoint needed).

    python -m benchmarks.inference_layout --data ../shared/data/fracatlas --images 32 --rounds 3 \\
        --out benchmarks/reported/inference_layout_cpu.json
"""

from __future__ import annotations

import argparse
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

from benchmarks.processor import processor
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig, build_mask_model
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.shipped_model import open_store

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
CPU = torch.device("cpu")


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


def summary(path: str, seconds: dict[str, list[float]], images: int, difference: float) -> dict[str, Any]:
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "path": path,
        "seconds_per_round": seconds,
        "xrays_per_second": {name: round(images / value, 3) for name, value in median.items()},
        "speed_up": round(median["contiguous"] / median["channels_last"], 3),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (test.json, images/).")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    images = [load_image(args.data / "images" / name) for name in names[: args.images]]
    detector = detector_paths(images, args.rounds)
    for result in detector:
        print(json.dumps(result), flush=True)
    report = {
        "command": f"python -m benchmarks.inference_layout --data {args.data} --images {args.images} "
                   f"--rounds {args.rounds}" + (f" --out {args.out}" if args.out else ""),
        "machine": processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "xrays": len(images),
        "paths": detector + mask_paths(images, args.rounds),
    }  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
