"""Does calibrating the fracture probability on a small validation set make it a better probability?

Each model version maps its X-rays' fracture probability (the noisy-OR of their box scores) through
Platt scaling fitted on its own validation X-rays (``detection.image_score.ProbabilityCalibration``).
A project's frozen validation set may be as small as the retrain gate allows (20 X-rays, 10 with
fractures), so this asks what a calibration fitted on that few does on X-rays it never saw.

The shipped detector scores FracAtlas val and test once. Calibrations are fitted on random subsets
of val (20, 40, 60, 80 X-rays, each with at least the gate's 10 fractures, 200 draws per size) and on
all of val; each is scored on test by Brier score, expected calibration error and the accuracy of
the call at one half, against the uncalibrated noisy-OR. Reported per size: the mean and the 5th
to 95th percentile over draws, and how many draws made test worse. The plot: test reliability
before and after the calibration fitted on all of val, and test Brier against validation size.

    python -m benchmarks.probability_calibration --data ../shared/data/fracatlas \\
        --out benchmarks/reported/probability_calibration_shipped.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.image_score_rules import split_predictions
from benchmarks.ship_model import probability_on_test
from fracture_al.detection.evaluation import (
    ImageMatches,
    brier_of,
    calibration_error_of,
    call_accuracy_of,
    match_detections,
)
from fracture_al.detection.image_score import (
    MIN_CALIBRATION_XRAYS,
    UNCALIBRATED,
    ProbabilityCalibration,
    fracture_probability,
)
from fracture_al.detection.shipped_model import verified_weights
from fracture_al.settings import Settings

SIZES = (20, 40, 60, 80)
DRAWS = 200
MEASURES = {"Brier score": brier_of, "calibration error": calibration_error_of,
            "accuracy of the call at one half": call_accuracy_of}  # fmt: skip
# Higher is better for the accuracy, lower for the other two.
HIGHER_IS_BETTER = {"accuracy of the call at one half"}


def matched(model_file: Path, data: Path) -> dict[str, list[ImageMatches]]:
    return {name: match_detections(coco, predictions)
            for name, (coco, predictions) in split_predictions(model_file, data).items()}  # fmt: skip


def fit(images: list[ImageMatches]) -> ProbabilityCalibration | None:
    """The calibration these X-rays give, however few (what the product's minimum is chosen by)."""
    return ProbabilityCalibration.fit([fracture_probability(image.scores) for image in images],
                                      [bool(image.boxes) for image in images], min_xrays=0)  # fmt: skip


def subset(images: list[ImageMatches], size: int, min_fractures: int, rng: np.random.Generator) -> list[ImageMatches]:
    """``size`` validation X-rays drawn at random, redrawn until ``min_fractures`` are fractured
    (the gate serves nothing on fewer)."""
    while True:
        chosen = [images[i] for i in rng.choice(len(images), size, replace=False)]
        if sum(bool(image.boxes) for image in chosen) >= min_fractures:
            return chosen


def by_validation_size(val: list[ImageMatches], test: list[ImageMatches], min_fractures: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    baseline = {name: measure(test, UNCALIBRATED) for name, measure in MEASURES.items()}
    rows: dict[str, Any] = {}
    for size in SIZES:
        calibrations = [fit(subset(val, size, min_fractures, rng)) for _ in range(DRAWS)]
        scored = {name: np.array([measure(test, c or UNCALIBRATED) for c in calibrations])
                  for name, measure in MEASURES.items()}  # fmt: skip
        rows[str(size)] = {
            "draws": DRAWS,
            "not_fitted": sum(c is None for c in calibrations),
            **{name: {"mean": float(values.mean()), "p05": float(np.percentile(values, 5)),
                      "p95": float(np.percentile(values, 95)),
                      "worse_than_uncalibrated": float(np.mean(values < baseline[name] if name in HIGHER_IS_BETTER
                                                               else values > baseline[name]))}
               for name, values in scored.items()},
        }  # fmt: skip
    return {"uncalibrated": baseline, "by_size": rows}


def reliability(images: list[ImageMatches], calibration: ProbabilityCalibration, bins: int = 10) -> list[dict]:
    probability = np.array([calibration(fracture_probability(image.scores)) for image in images])
    truth = np.array([bool(image.boxes) for image in images])
    which = np.minimum((probability * bins).astype(int), bins - 1)
    return [{"bin": b, "xrays": int(np.sum(which == b)), "mean_probability": float(probability[which == b].mean()),
             "share_fractured": float(truth[which == b].mean())}
            for b in range(bins) if np.any(which == b)]  # fmt: skip


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, bins in result["test_reliability"].items():
        sizes = [20 + 4 * row["xrays"] for row in bins]
        left.plot([r["mean_probability"] for r in bins], [r["share_fractured"] for r in bins], marker="o",
                  label=name, alpha=0.8)  # fmt: skip
        left.scatter([r["mean_probability"] for r in bins], [r["share_fractured"] for r in bins], s=sizes, alpha=0.3)
    left.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="perfectly calibrated")
    left.set(xlabel="mean fracture probability in the bin", ylabel="share of the bin's X-rays fractured",
             title=f"FracAtlas test ({result['test_xrays']} X-rays), bins of 0.1 (area: X-rays)")  # fmt: skip
    left.legend(fontsize=8)
    by_size = result["by_validation_size"]["by_size"]
    sizes = [int(size) for size in by_size]
    brier = [by_size[str(size)]["Brier score"] for size in sizes]
    right.errorbar(sizes, [b["mean"] for b in brier], yerr=[[b["mean"] - b["p05"] for b in brier],
                   [b["p95"] - b["mean"] for b in brier]], marker="o", capsize=3,
                   label="calibrated on n val X-rays (mean, 5th-95th percentile of draws)")  # fmt: skip
    right.plot([result["val_xrays"]], [result["all_of_val"]["Brier score"]["calibrated"]["value"]], marker="s",
               linestyle="none", color="C1", label="calibrated on all of val")  # fmt: skip
    right.axhline(result["by_validation_size"]["uncalibrated"]["Brier score"], color="C3", linestyle="--",
                  label="noisy-OR, uncalibrated")  # fmt: skip
    right.axvline(MIN_CALIBRATION_XRAYS, color="grey", linewidth=0.8, linestyle=":",
                  label="fewest X-rays fracture-al calibrates on")  # fmt: skip
    right.set(xlabel="validation X-rays the calibration was fitted on", ylabel="test Brier score (lower is better)",
              title="Small validation sets")  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--model", type=Path, help="A saved detector file (default: the shipped one).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probability_calibration.json"))
    args = parser.parse_args()

    model_file = args.model or verified_weights()
    images = matched(model_file, args.data)
    calibration = fit(images["val"])
    if calibration is None:
        raise SystemExit("val has no calibration to fit: it needs fractured and healthy X-rays the model ranks")
    min_fractures = Settings.model_fields["gate_min_validation_fractures"].default
    result = {
        "model": str(model_file), "val_xrays": len(images["val"]), "test_xrays": len(images["test"]),
        "calibration_on_all_of_val": calibration.to_dict(),
        "all_of_val": probability_on_test(images["test"], calibration),
        "by_validation_size": by_validation_size(images["val"], images["test"], min_fractures),
        "test_reliability": {"noisy-OR": reliability(images["test"], UNCALIBRATED),
                             "calibrated on val": reliability(images["test"], calibration)},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"calibration": result["calibration_on_all_of_val"], "all_of_val": result["all_of_val"],
                      "by_validation_size": result["by_validation_size"]}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
