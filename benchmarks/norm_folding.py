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
from pathlib import Path

import torch
from torchvision.ops import FrozenBatchNorm2d

from benchmarks.alternating import CPU, Arms, shipped_detector_paths, training_speed
from benchmarks.processor import processor
from fracture_al.detection.data import train_transforms
from fracture_al.detection.images import load_image
from fracture_al.detection.norm_folding import FoldedFrozenBatchNorm2d, NormFoldedConv2d, fold_frozen_norms
from fracture_al.detection.recipes import recipe
from fracture_al.detection.training import (
    Initialisation,
    TrainConfig,
    initial_model,
    load_splits,
    make_loader,
    seed_everything,
)


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


# Both in channels-last, the layout a CPU runs the detector in (model_files.to_device).
FOLDING: Arms = {
    "unfolded": lambda model: set_folded(model, False).to(memory_format=torch.channels_last),
    "folded": lambda model: set_folded(model, True).to(memory_format=torch.channels_last),
}


def gradient_difference(data: Path) -> float:
    """The largest absolute difference between the arms' gradients, relative to the largest
    gradient, of one loss on the backbone and FPN (where the folding is; the detector's own losses
    sample anchors and proposals, and a rounding difference can change the draw): the sum of
    squares of every feature map on the first training batch, from the freshly seeded detector
    ``training_speed`` starts from. In float64: float32 rounds the two computations differently by
    about 1e-3 of the largest gradient."""
    splits = load_splits(data)
    model_config, train_config = recipe("baseline").configs(splits["train"].coco,
                                                            train=TrainConfig(batch_size=4, workers=1))  # fmt: skip
    seed_everything(train_config.seed)
    seeded, _ = initial_model(model_config, Initialisation())
    loader = make_loader(splits["train"].dataset(train_transforms()), train_config, CPU, shuffle=True, epoch=1)
    images = next(iter(loader))[0]
    gradients = {}
    for name, put in FOLDING.items():
        model = copy.deepcopy(seeded).double()
        put(model)
        tensors = model.transform([image.double() for image in images])[0].tensors
        sum((features**2).sum() for features in model.backbone(tensors).values()).backward()
        gradients[name] = {key: p.grad for key, p in model.backbone.named_parameters() if p.grad is not None}
    if not gradients["unfolded"] or gradients["folded"].keys() != gradients["unfolded"].keys():
        return float("inf")
    scale = max(float(g.abs().max()) for g in gradients["unfolded"].values())
    return max(float((gradients["folded"][key] - g).abs().max()) for key, g in gradients["unfolded"].items()) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (train/test.json, images/).")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=120, help="Training per arm and round.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    training = {**training_speed(args.data, args.train_seconds, args.rounds, FOLDING),
                "largest_gradient_difference": gradient_difference(args.data)}  # fmt: skip
    print(json.dumps(training), flush=True)
    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    images = [load_image(args.data / "images" / name) for name in names[: args.images]]
    inference = shipped_detector_paths(images, args.rounds, FOLDING)
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
