"""The multi-model study on FracAtlas: every segmentation and classification network trained for the
same budget on FracAtlas train (selected on val), tested on FracAtlas test, in one table like the
study's: image-level accuracy, Dice and Jaccard (over fractured and over all X-rays), pixel
accuracy, sensitivity, specificity, AUROC, each with a bootstrap 95% interval over the test X-rays,
and training and inference images/s. Beside them, the image-level classifiers derived from the
shipped detector (its boxes) and from each segmenter (its highest pixel probability).

Each network is one resumable run (``fit_masks`` checkpoints every epoch) and its result is kept,
so a stopped study continues where it was.

    python -m benchmarks.segmentation_study --minutes 20 --image-size 256            # 2-core CPU
    python -m benchmarks.segmentation_study --minutes 30 --image-size 512 --epochs 60  # GPU
    python -m benchmarks.segmentation_study --report

For reference: public FracAtlas work reports pixel Dice of about 0.36-0.38 on fractured X-rays
(DeepLabV3); the study's own 94-98% accuracy and 0.87-0.95 Dice come from other data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from fracture_al.detection.devices import choose_device
from fracture_al.detection.evaluation import metrics_with_intervals
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.mask_training import MaskTrainConfig, evaluate_masks, fit_masks
from fracture_al.detection.model_files import load_model
from fracture_al.detection.shipped_model import open_store
from fracture_al.detection.training import TrainConfig, evaluate_split, load_splits

SHIPPED_DETECTOR = "shipped_detector"  # the row of the detector's image-level classification
COLUMNS = ("accuracy", "dice_fractured", "jaccard_fractured", "dice_all", "jaccard_all", "pixel_accuracy",
           "sensitivity", "specificity", "auroc")  # fmt: skip


def run_network(name: str, args: argparse.Namespace, splits, device: torch.device) -> dict[str, Any]:
    """Train one network for the budget, test it, time its inference."""
    arch = ARCHITECTURES[name]
    config = MaskModelConfig(arch.task, name, image_size=args.image_size)
    train_config = MaskTrainConfig(epochs=args.epochs, batch_size=args.batch_size, time_budget_minutes=args.minutes,
                                   select_on="dice_fractured" if arch.task == "segmentation" else "auroc")  # fmt: skip
    outcome = fit_masks(config, train_config, splits["train"], splits["val"], args.out / "runs" / name, device=device,
                        resume=True, on_epoch=lambda s: print(name, json.dumps(s), flush=True))  # fmt: skip
    intervals, _ = evaluate_masks(outcome.model, config, splits["test"], train_config, device, resamples=1000)
    images = [load_image(splits["test"].image_dir / r.file_name) for r in splits["test"].coco.images[:32]]
    predictor = MaskPredictor(outcome.model, config, device, name)
    started = time.monotonic()
    predictor.predict(images)
    return {"network": name, "task": arch.task, "description": arch.description, "test": intervals,
            "epochs": outcome.epochs, "selected_epoch": outcome.selected_epoch,
            "train_images_per_second": outcome.images_per_second,
            "inference_images_per_second": len(images) / (time.monotonic() - started)}  # fmt: skip


def detector_as_classifier(splits, device: torch.device) -> dict[str, Any]:
    """The shipped detector as an image-level classifier: a box shown at its display threshold
    (sensitivity, specificity), its fracture probability (AUROC)."""
    import tempfile

    version = open_store(Path(tempfile.mkdtemp()) / "models").current()
    model, config = load_model(version.weights_path, device)
    threshold = version.operating_threshold or 0.5
    _, predictions = evaluate_split(model, splits["test"], TrainConfig(), device, flip_tta=config.flip_tta)
    intervals = metrics_with_intervals(splits["test"].coco, predictions, threshold=threshold)
    return {"network": "shipped detector (boxes)", "task": "detection", "test": intervals}


def report(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not results:
        raise SystemExit(f"no results in {out}/results")
    lines = ["| network | task | " + " | ".join(COLUMNS) + " | train img/s | infer img/s |",
             "|---" * (len(COLUMNS) + 4) + "|"]  # fmt: skip
    for result in results:
        cells = []
        for column in COLUMNS:
            value = result["test"].get(column)
            cells.append("-" if not value or value.get("value") is None else
                         f"{value['value']:.3f} ({value['low']:.3f}-{value['high']:.3f})")  # fmt: skip
        speed = [f"{result[k]:.1f}" if k in result else "-" for k in ("train_images_per_second",
                                                                      "inference_images_per_second")]  # fmt: skip
        lines.append(f"| {result['network']} | {result['task']} | " + " | ".join(cells + speed) + " |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    plot(results, out / "comparison.png")
    return table


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Dice over fractured X-rays and image-level AUROC per network, with their intervals."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric in zip(axes, ("dice_fractured", "auroc"), strict=True):
        shown = [r for r in results if (r["test"].get(metric) or {}).get("value") is not None]
        values = np.array([r["test"][metric]["value"] for r in shown])
        lows, highs = (np.array([r["test"][metric][end] for r in shown]) for end in ("low", "high"))
        errors = [values - lows, highs - values]
        axis.bar(range(len(shown)), values, yerr=errors, capsize=5, color="tab:blue")
        axis.set_xticks(range(len(shown)), [r["network"] for r in shown], rotation=30, ha="right", fontsize=8)
        axis.set(ylim=(0, 1), title=f"FracAtlas test {metric} (bootstrap 95%)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/segmentation_study"))
    parser.add_argument("--networks", nargs="+", default=[*ARCHITECTURES, SHIPPED_DETECTOR],
                        choices=[*ARCHITECTURES, SHIPPED_DETECTOR])  # fmt: skip
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per network")
    parser.add_argument("--epochs", type=int, default=30, help="at most this many epochs within the budget")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    device = choose_device(args.device)
    splits = load_splits(args.data)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    for name in args.networks:
        result = args.out / "results" / f"{name}.json"
        if not result.exists():
            if name == SHIPPED_DETECTOR:
                made = detector_as_classifier(splits, device)
            else:
                made = run_network(name, args, splits, device)
            result.write_text(json.dumps(made))
    print(report(args.out))


if __name__ == "__main__":
    main()
