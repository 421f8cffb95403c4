"""Two saved detectors on the same FracAtlas X-rays: is B better than A, beyond the noise of a
small test set?

Paired bootstrap over the X-rays (:func:`detection.bootstrap.paired_difference`): each resample
draws X-rays, and both models are scored on the same draw, so what the two have in common cancels.
Reports B - A for mAP@50 and image AUROC on val and test, with 95% intervals and the share of
resamples where B is ahead. Used to compare a shipped model with the one it replaces (the old file
comes out of git history):

    git show b5dfdaf:detection/shipped/fracture_detector.pt > /tmp/previous.pt
    python -m benchmarks.compare_detectors --a /tmp/previous.pt --b detection/shipped/fracture_detector.pt \\
        --out benchmarks/reported/shipped_model_vs_previous.json

``--b-set`` changes B's inference settings (the fields of :data:`INFERENCE_SETTINGS`), so one
detector can be compared with itself under flip TTA or at another test scale:

    python -m benchmarks.compare_detectors --a detection/shipped/fracture_detector.pt \\
        --b detection/shipped/fracture_detector.pt --b-set flip_tta=true
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from fracture_al.detection.bootstrap import paired_difference
from fracture_al.detection.digests import sha256_of
from fracture_al.detection.evaluation import ImageMatches, auroc_of, average_precision, match_detections
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.model_files import load_model
from fracture_al.detection.training import DataSplit, TrainConfig, evaluate_split, load_splits

METRICS = {"mAP50": average_precision, "auroc": auroc_of}
# ModelConfig fields that change how a trained detector predicts, not which weights it has.
INFERENCE_SETTINGS = ("flip_tta", "min_size", "max_size")


def inference_setting(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` (VALUE in JSON: ``flip_tta=true``, ``min_size=640``) for ``--b-set``."""
    name, _, value = text.partition("=")
    if name not in INFERENCE_SETTINGS:
        raise argparse.ArgumentTypeError(f"{name!r} is not an inference setting ({', '.join(INFERENCE_SETTINGS)})")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be JSON, e.g. flip_tta=true") from None
    expected = type(getattr(ModelConfig(), name))
    if type(parsed) is not expected:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes a {expected.__name__}")
    return name, parsed


def matches_by_split(
    model: torch.nn.Module, flip_tta: bool, splits: dict[str, DataSplit], split_names: list[str], label: str
) -> dict[str, list[ImageMatches]]:
    """``model``'s detections matched to the boxes of each named split."""
    matches = {}
    for name in split_names:
        _, predictions = evaluate_split(model, splits[name], TrainConfig(), torch.device("cpu"), flip_tta=flip_tta,
                                        description=f"{label} {name}")  # fmt: skip
        matches[name] = match_detections(splits[name].coco, predictions)
    return matches


def compare(matches_a: list[ImageMatches], matches_b: list[ImageMatches]) -> dict[str, Any]:
    if [m.image_id for m in matches_a] != [m.image_id for m in matches_b]:
        raise ValueError("the two models were scored on different X-rays")
    rows = {}
    for name, statistic in METRICS.items():
        d = paired_difference(matches_a, matches_b, statistic)
        rows[name] = {"a": statistic(matches_a), "b": statistic(matches_b), "b_minus_a": d.value,
                      "low": d.low, "high": d.high, "share_b_ahead": d.probability_better}  # fmt: skip
    return {"xrays": len(matches_a), **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="The reference detector file.")
    parser.add_argument("--b", type=Path, required=True, help="The detector compared with it.")
    parser.add_argument("--b-set", type=inference_setting, nargs="+", default=[], metavar="FIELD=VALUE",
                        help=f"Predict with B under these settings ({', '.join(INFERENCE_SETTINGS)}).")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_detectors.json"))
    args = parser.parse_args()

    b_settings = dict(args.b_set)
    model_a, config_a = load_model(args.a)
    model_b, config_b = load_model(args.b, overrides=b_settings)
    if config_a.class_names != config_b.class_names:
        raise SystemExit(f"A detects {config_a.class_names}, B {config_b.class_names}: nothing to pair")
    splits = load_splits(args.data, class_names=config_a.class_names)
    matches_a = matches_by_split(model_a, config_a.flip_tta, splits, args.splits, f"A {args.a.name}")
    matches_b = matches_by_split(model_b, config_b.flip_tta, splits, args.splits, f"B {args.b.name}")
    result = {"a": {"file": str(args.a), "sha256": sha256_of(args.a)},
              "b": {"file": str(args.b), "sha256": sha256_of(args.b), "settings": b_settings},
              "splits": {split: compare(matches_a[split], matches_b[split]) for split in args.splits}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for split, rows in result["splits"].items():
        for name in METRICS:
            row = rows[name]
            print(f"{split:5} {name:6} A {row['a']:.3f}  B {row['b']:.3f}  B-A {row['b_minus_a']:+.3f} "
                  f"({row['low']:+.3f} to {row['high']:+.3f}), B ahead in {row['share_b_ahead']:.0%} of draws")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
