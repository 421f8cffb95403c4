"""Package a trained FracAtlas model as the detector fracture-al ships (detection/shipped/).

Takes the JSON that ``benchmarks/train_fracatlas.py`` wrote (its model version and recipe), stores
the weights in half precision, evaluates those weights as they will be served: on FracAtlas val,
where the display threshold and the fracture probability are calibrated
(detection.evaluation.operating_threshold, probability_calibration), and on test, with bootstrap 95%
intervals over the X-rays at that threshold; and writes ``manifest.json``
(SHA-256, recipe, command, metrics) and ``MODEL_CARD.md``.

    python -m benchmarks.train_fracatlas --data ../shared/data/fracatlas --recipe cpu \\
        --home benchmarks/results/cpu60 --out benchmarks/results/cpu60.json
    python -m benchmarks.ship_model --result benchmarks/results/cpu60.json \\
        --command "python -m benchmarks.train_fracatlas --data ../shared/data/fracatlas --recipe cpu"

A run warm-started from the shipped weights (``train_fracatlas --warm-start
detection/shipped/fracture_detector.pt``) is a further training stage: its manifest keeps the one it
continued (``continues``) and the card lists every stage with its command.

Without ``--result`` the shipped weights stay as they are and only their metrics and card are
made again (``python -m benchmarks.ship_model``).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fracture_al.detection.bootstrap import bootstrap_interval, paired_difference
from fracture_al.detection.digests import sha256_of
from fracture_al.detection.evaluation import (
    ImageMatches,
    brier_of,
    calibration_error_of,
    call_accuracy_of,
    evaluate_predictions,
    match_detections,
    metrics_with_intervals,
)
from fracture_al.detection.image_score import ProbabilityCalibration
from fracture_al.detection.model_files import load_model, saved_model_config
from fracture_al.detection.shipped_model import CARD_FILE, MANIFEST_FILE, SHIPPED_DIR, manifest, verified_weights
from fracture_al.detection.training import TrainConfig, evaluate_split, load_splits

WEIGHTS_FILE = "fracture_detector.pt"
ATTRIBUTION = (
    "FracAtlas (CC BY 4.0): Abedeen, I., Rahman, M. A., Prottyasha, F. Z., Ahmed, T., Chowdhury, T. M., "
    "Shatabda, S. \"FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of "
    "Musculoskeletal Radiographs.\" Scientific Data 10, 521 (2023). https://doi.org/10.1038/s41597-023-02432-4"
)


def half_precision(model_file: Path, target: Path) -> None:
    saved = torch.load(model_file, map_location="cpu", weights_only=True)
    saved["model"] = {k: v.half() if v.is_floating_point() else v for k, v in saved["model"].items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, target)


def served_metrics(weights: Path, data: Path) -> dict[str, Any]:
    """The shipped weights' metrics: on val with the display threshold calibrated there, on test at
    that threshold with bootstrap 95% intervals."""
    model, config = load_model(weights)
    splits, device = load_splits(data, class_names=config.class_names), torch.device("cpu")
    validation, _ = evaluate_split(model, splits["val"], TrainConfig(), device, flip_tta=config.flip_tta)
    threshold = validation["operating_threshold"]
    _, predictions = evaluate_split(model, splits["test"], TrainConfig(), device, flip_tta=config.flip_tta)
    test = splits["test"].coco
    calibration = ProbabilityCalibration.from_dict(validation["probability_calibration"])
    return {"threshold": threshold, "validation": validation,
            "test": evaluate_predictions(test, predictions, calibration=calibration),  # the call as served
            "test_intervals": metrics_with_intervals(test, predictions, threshold=threshold),
            "test_probability": probability_on_test(match_detections(test, predictions), calibration)}  # fmt: skip


def probability_on_test(images: list[ImageMatches], calibration: ProbabilityCalibration) -> dict[str, Any]:
    """How good a probability the X-ray's fracture probability is on test, before and after the
    calibration fitted on val, each with its bootstrap 95% interval and the paired difference."""
    measures = {"Brier score": brier_of, "calibration error": calibration_error_of,
                "accuracy of the call at one half": call_accuracy_of}  # fmt: skip
    rows = {}
    for name, measure in measures.items():
        calibrated = partial(measure, calibration=calibration)
        rows[name] = {
            "uncalibrated": bootstrap_interval(images, measure).to_dict(),
            "calibrated": bootstrap_interval(images, calibrated).to_dict(),
            "difference": paired_difference(images, images, measure, statistic_b=calibrated).to_dict(),
        }
    return rows


def training_stages(content: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainings behind the shipped weights, first to last: a warm restart's manifest holds the
    manifest of the shipped model it continued (``continues``)."""
    stages = [content]
    while "continues" in stages[0]:
        stages.insert(0, stages[0]["continues"])
    return stages


def stage_paragraph(stage: dict[str, Any], start: str) -> str:
    train = stage["train"]
    # A time budget ends the schedule where the minutes run out, so how many epochs fit depends on the CPU.
    # Stages trained before train_fracatlas recorded the processor's name carry it, typed by hand, in "machine".
    machine = f" ({stage['machine']})" if stage.get("machine") else ""
    minutes = train.get("time_budget_minutes")
    budget = f" within a {minutes:g}-minute budget{machine}" if minutes else machine
    return (
        f"Recipe `{stage['recipe']}` from `detection/recipes.py`, from {start}: SGD lr {train['lr']}, "
        f"batch {train['batch_size']}, seed {train['seed']}, {train['epochs']} epochs planned, "
        f"{stage['epochs_run']} run, epoch {stage['selected_epoch']} kept (best validation mAP@50), fracture X-rays at "
        f"{train['positive_fraction']} of draws, weight EMA {train['ema_decay']}; trained on {stage['device']}{budget}."
    )


def card(content: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {m['value']:.3f} | {m['low']:.3f} to {m['high']:.3f} |"
        for name, m in content["metrics"]["test_intervals"].items()
        if m["value"] is not None
    )
    calibration = content["metrics"]["validation"]["probability_calibration"]
    slope, intercept = calibration["slope"], calibration["intercept"]
    probability_rows = "\n".join(
        f"| {name} | {interval_text(row['uncalibrated'])} | {interval_text(row['calibrated'])} | "
        f"{interval_text(row['difference'], signed=True)} |"
        for name, row in content["metrics"]["test_probability"].items()
    )
    model, stages = content["model"], training_stages(content)
    starts = ["ImageNet MobileNetV2 weights"] + [
        f"stage {number}'s shipped weights (SHA-256 `{stage['sha256']}`)" for number, stage in enumerate(stages[:-1], 1)
    ]
    paragraphs = "\n\n".join(
        f"{number}. {stage_paragraph(stage, start)}"
        for number, (stage, start) in enumerate(zip(stages, starts, strict=True), 1)
    )
    reproduce = "\n".join(
        f"    {stage['command']}\n"
        f"    python -m benchmarks.ship_model --result <that run's JSON> --command \"<the command above>\""
        for stage in stages
    )
    return f"""# fracture-al shipped fracture detector

A Faster R-CNN (`{model['arch']}`, torchvision) that draws boxes around bone fractures on
radiographs. It is what a new fracture-al installation serves before any project has retrained it:
its boxes are suggestions for trained annotators, never a diagnosis, and fracture-al is not a
medical device.

## Training data
The FracAtlas train split as staged in fracture-al's developer set
(1,233 X-rays, 568 with fractures, 754 boxes; longer side at most 640 px). Model selection on the
FracAtlas val split (135 X-rays). Metrics below are on the FracAtlas test split (132 X-rays, 61
with fractures, 67 boxes), which was not used for training or selection.

Data: {ATTRIBUTION}

## Recipe
Input {model['min_size']} px (max {model['max_size']}), anchors {model['anchor_sizes']} x ratios
{model['aspect_ratios']}, box head {model['box_head_size']} wide, flip TTA {'on' if model['flip_tta'] else 'off'}.
Trained on the train split in {len(stages)} stage(s), each a warm-up and a cosine learning-rate schedule:

{paragraphs}

Reproduce (each stage's ship step puts the weights where the next stage's `--warm-start` reads them):

{reproduce}

Weights: `{content['file']}`, half precision, SHA-256 `{content['sha256']}` (checked before
it is installed into a model store and every time it is loaded).

## Test metrics (FracAtlas test, bootstrap 95% intervals over the 132 X-rays)
Sensitivity and specificity are image-level: whether the X-ray is shown a box at the display
threshold {content['metrics']['threshold']:.3f}, the box score maximising box F1 on FracAtlas val, which the
backend shows boxes from unless a deployment or label config sets its own. AUROC ranks the X-rays by
their fracture probability, the noisy-OR of their box scores.

| metric | value | 95% interval |
|---|---|---|
{rows}

## Fracture probability
The X-ray's fracture probability (Label Studio's prediction score, FiftyOne's `fracture_score`, the
fracture / no-fracture call at one half) is the noisy-OR of its box scores, which runs
overconfident, mapped through Platt scaling fitted on FracAtlas val: sigmoid({slope:.3f} x logit(p)
{intercept:+.3f}). It ranks X-rays as before (same AUROC). On test, 95% intervals:

| measure | noisy-OR | calibrated | difference (paired) |
|---|---|---|---|
{probability_rows}

## Limits
One public data set from one region, downscaled to at most 640 px, with fractures of the hand,
leg, hip and shoulder. Expect lower numbers on other hospitals' X-rays: let fracture-al retrain it
on your own labels (the retrain gate only serves a model that does better on your own validation
X-rays).
"""


def interval_text(interval: dict[str, Any], *, signed: bool = False) -> str:
    number = "{:+.3f}" if signed else "{:.3f}"
    return f"{number.format(interval['value'])} ({number.format(interval['low'])} to {number.format(interval['high'])})"


def continued_manifest(result: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The shipped model's manifest when ``result`` is a warm restart of it (None for a training from
    ImageNet): the card then tells both trainings. Any other starting point has no known history."""
    if not result.get("warm_start"):
        return None
    shipped = manifest(folder)
    if result["warm_start"]["sha256"] != shipped["sha256"]:
        raise SystemExit(f"the run was warm-started from {result['warm_start']['file']}, not the shipped model "
                         f"(SHA-256 {shipped['sha256']}): its training history is unknown")  # fmt: skip
    return shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, help="JSON written by benchmarks/train_fracatlas.py")
    parser.add_argument("--model-file", type=Path, help="Default: the result's version folder's model.pt")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--command", help="The exact training command, for the card (with --result).")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = parser.parse_args()

    if args.result is None:
        content = manifest(args.out)
        verified_weights(args.out)
    elif args.command is None:
        parser.error("--result needs --command, the exact training command")
    else:
        result = json.loads(args.result.read_text())
        continues = continued_manifest(result, args.out)
        half_precision(args.model_file or Path(result["version_path"]) / "model.pt", args.out / WEIGHTS_FILE)
        content = {
            "name": f"fracatlas-{result['recipe']}",
            "file": WEIGHTS_FILE,
            "sha256": sha256_of(args.out / WEIGHTS_FILE),
            "recipe": result["recipe"],
            "command": args.command,
            "device": result["device"],
            "epochs_run": result["epochs"],
            "selected_epoch": result.get("selected_epoch"),
            "model": saved_model_config(args.out / WEIGHTS_FILE).to_dict(),
            "train": result["train_config"],
            "data": {"train": "FracAtlas train split", "validation": "FracAtlas val split",
                     "test": "FracAtlas test split", "license": "CC BY 4.0", "attribution": ATTRIBUTION},
            **({"continues": continues} if continues else {}),
        }  # fmt: skip
    content["metrics"] = served_metrics(args.out / WEIGHTS_FILE, args.data)
    (args.out / MANIFEST_FILE).write_text(json.dumps(content, indent=2) + "\n")
    (args.out / CARD_FILE).write_text(card(content))
    print(json.dumps(content["metrics"]["test_intervals"], indent=2))
    print(f"display threshold {content['metrics']['threshold']:.3f}; shipped {args.out / WEIGHTS_FILE} "
          f"({(args.out / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
