"""Quality and speed baseline of the default offline detector on FracAtlas.

Trains ``mobilenet_v2_fpn`` (seeded from the ImageNet MobileNetV2 checkpoint) on the train split
for a fixed number of epochs, then reports test mAP@50, mAP@75, mAP@[.5:.95], image-level AUROC,
training images/s and inference images/s. Prints a table and saves JSON; the trained model is
published into ``--home`` so later benchmarks (backend latency, active learning) can reuse it.

    python -m benchmarks.train_fracatlas --data ../shared/data/fracatlas --recipe baseline --epochs 4
    python -m benchmarks.train_fracatlas --data ../shared/data/fracatlas --recipe gpu

``--warm-start FILE`` continues a saved detector (a weights file with its model config, e.g. the
shipped ``detection/shipped/fracture_detector.pt``) on a fresh schedule: a warm restart, for when a
training's validation curve was still rising as its learning rate annealed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.predictions import compact
from benchmarks.processor import device_name
from fracture_al.detection.devices import choose_device
from fracture_al.detection.digests import sha256_of
from fracture_al.detection.images import load_image
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.recipes import RECIPES, recipe
from fracture_al.detection.store import ModelStore
from fracture_al.detection.training import Initialisation, TrainConfig, evaluate_split, fit, load_splits
from fracture_al.detection.versioning import data_sources, publish_outcome


def inference_images_per_second(predictor: Predictor, paths: list[Path], batch_size: int) -> float:
    images = [load_image(path) for path in paths]
    predictor.predict(images[:batch_size], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    predictor.predict(images, batch_size=batch_size)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--home", type=Path, default=Path("benchmarks/results/home"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_fracatlas.json"))
    parser.add_argument("--recipe", choices=list(RECIPES), default="baseline")
    parser.add_argument("--epochs", type=int, help="Override the recipe's epochs.")
    parser.add_argument("--lr", type=float, help="Override the recipe's peak learning rate.")
    parser.add_argument("--ema-decay", type=float, help="Keep a weight EMA with this decay.")
    parser.add_argument("--warm-start", type=Path, help="Start from this saved detector file, not ImageNet weights.")
    parser.add_argument("--time-budget", type=float, help="Stop training after this many minutes (0: no budget).")
    parser.add_argument("--workers", type=int, help="Override the recipe's data-loading processes.")
    parser.add_argument("--box-head-size", type=int, help="Override the box head's width.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run-name", help="Run folder under HOME/runs (default: a timestamp); reuse it with --resume.")
    parser.add_argument("--resume", action="store_true", help="Continue the run folder's last checkpoint.")
    args = parser.parse_args()
    if args.warm_start and args.box_head_size:
        parser.error("--box-head-size cannot change a warm-started detector: it keeps the saved one's")

    device = choose_device(args.device)
    splits = load_splits(args.data)
    overrides = {"epochs": args.epochs, "lr": args.lr, "time_budget_minutes": args.time_budget, "workers": args.workers,
                 "ema_decay": args.ema_decay}
    model_config, train_config = recipe(args.recipe).configs(
        splits["train"].coco,
        model=replace(ModelConfig(class_names=splits["train"].coco.class_names),
                      **({"box_head_size": args.box_head_size} if args.box_head_size else {})),
        train=TrainConfig(seed=args.seed),
    )
    train_config = replace(train_config, **{k: v for k, v in overrides.items() if v is not None})
    warm_start = None
    if args.warm_start:  # the saved detector's own architecture, size and anchors; hashed as read
        warm_start = {"file": str(args.warm_start), "sha256": sha256_of(args.warm_start)}
        saved = torch.load(args.warm_start, map_location="cpu", weights_only=True)
        model_config = ModelConfig.from_dict(saved["model_config"])
    store = ModelStore(args.home / "models")
    run_dir = args.home / "runs" / (args.run_name or time.strftime("bench-%Y%m%d-%H%M%S"))

    outcome = fit(
        model_config,
        train_config,
        splits["train"],
        splits["val"],
        run_dir,
        device=device,
        init=Initialisation(model_file=args.warm_start),
        resume=args.resume,
        on_epoch=lambda summary: print(json.dumps(summary), flush=True),
    )
    version = publish_outcome(store, outcome, test_split=splits["test"], data_sources=data_sources(**splits))
    test = version.metrics["test"]

    predictor = Predictor.from_version(version, device)
    test_paths = [splits["test"].image_dir / record.file_name for record in splits["test"].coco.images]
    inference_rate = inference_images_per_second(predictor, test_paths, batch_size=4)
    _, predictions = evaluate_split(
        outcome.model, splits["test"], train_config, device, flip_tta=model_config.flip_tta, description="test"
    )

    result = {
        "model_version": version.name,
        "version_path": str(version.path),
        "arch": model_config.arch,
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "recipe": args.recipe,
        "warm_start": warm_start,
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "selected_epoch": outcome.selected_epoch,
        "epochs": len(outcome.epochs),
        "train_images": len(splits["train"].coco.images),
        "min_size": model_config.min_size,
        "train_minutes": outcome.seconds / 60,
        "train_images_per_second": outcome.images_per_second,
        "inference_images_per_second": inference_rate,
        "test": test,
        "validation_per_epoch": outcome.epochs,
        "plots": [str(path) for path in version.plots],
        "test_predictions": compact(predictions),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    title = (f"{args.recipe}: {model_config.arch}, {len(outcome.epochs)} epochs, {model_config.min_size} px, "
             f"{result['device']}")
    table = Table(title=title)
    for column in ("test mAP@50", "test mAP@75", "test mAP", "test AUROC", "train img/s", "infer img/s", "train min"):
        table.add_column(column, justify="right")
    table.add_row(
        *("-" if v is None else f"{v:.3f}" for v in (test["mAP50"], test["mAP75"], test["mAP"], test["auroc"])),
        f"{outcome.images_per_second:.2f}",
        f"{inference_rate:.2f}",
        f"{outcome.seconds / 60:.1f}",
    )
    Console().print(table)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
