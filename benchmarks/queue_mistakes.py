"""Where a review queue puts a trained detector's image-level mistakes, acquisition by acquisition.

No training: one detector scores a pool it was not trained on, with the product's own scoring
(``measure_signals``, TTA on) and ranking (``rank_tasks``), and each acquisition of
``benchmarks.active_learning`` orders the pool. A mistake is a wrong image-level call: a fractured
X-ray whose fracture probability is under 0.5, or a healthy one at or over. The probability is the
one served: the noisy-OR of the box scores through the version's calibration (the shipped
detector's was fitted on val, half of the default pool: two parameters); also counted by the
uncalibrated noisy-OR and by the best box alone (the call before ``detection/image_score.py``).
Reported per acquisition: the share
of the mistakes in the first 10% and 20% of the queue (random: 10% and 20%), with Wilson 95%
intervals. The issue's target is 40% in the top 10%. What the share says about labels saved needs
the learning curves of ``benchmarks.active_learning``; this is the quick look.

Also reported: how much any order by the fracture probability p alone could hold. If p were
calibrated, an X-ray's call would be wrong with probability min(p, 1 - p), never above one half,
so a top k would expect the sum of min(p, 1 - p) over its X-rays, at most k / 2, and the order by
min(p, 1 - p) (``image_entropy``'s) would be the best by p alone; the pool's observed mistakes
against their expected count say how calibrated p is. Without assuming calibration: the mistake
rate fitted to p by isotonic regression on each side of the call threshold (rising towards it from
both sides), on the pool itself, and the share of the mistakes the top k by that fitted rate holds,
an optimistic (in-sample) bound for any order by p alone that ranks X-rays nearer the threshold
first on each side.

    python -m benchmarks.queue_mistakes --data ../shared/data/fracatlas \\
        --out benchmarks/reported/queue_mistakes_shipped.json

Default pool: FracAtlas val + test (267 X-rays); default detector: the shipped one (trained on
train, selected on val).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.isotonic import IsotonicRegression
from tqdm import tqdm

from benchmarks.active_learning import ACQUISITIONS, queue_order
from benchmarks.image_score_rules import CHOSEN, RULES
from fracture_al.detection.data import CocoFile
from fracture_al.detection.image_score import UNCALIBRATED, ProbabilityCalibration
from fracture_al.detection.images import load_image
from fracture_al.detection.model_files import load_model
from fracture_al.detection.predictor import ImagePrediction, Predictor
from fracture_al.detection.shipped_model import manifest, verified_weights
from fracture_al.integrations.task_predictions import measure_signals
from fracture_al.sampling.queue import TaskSignals

CALL_THRESHOLD = 0.5
TOPS = (0.1, 0.2)
# Each image-level call's score, from the X-ray's box scores.
CALLS: dict[str, Callable[[ImagePrediction], float]] = {
    "fracture probability": lambda prediction: prediction.image_score,  # calibrated, as served
    "noisy-OR, uncalibrated": lambda prediction: RULES[CHOSEN](prediction.scores),
    "best box": lambda prediction: RULES["best box"](prediction.scores),
}


def score_pool(
    model_file: Path, calibration: ProbabilityCalibration, data: Path, splits: list[str], batch: int
) -> dict[str, Any]:
    """Every pool X-ray's signals, predictions and truth, by a running index as task id."""
    model, config = load_model(model_file)
    predictor = Predictor(model, config, torch.device("cpu"), model_file.name, calibration=calibration)
    records = [(data / "images", record) for split in splits for record in CocoFile(data / f"{split}.json").images]
    signals: list[TaskSignals] = []
    predictions: list[ImagePrediction] = []
    for start in tqdm(range(0, len(records), batch), desc="score pool", unit="batch"):
        chunk = records[start: start + batch]
        images = [load_image(folder / record.file_name) for folder, record in chunk]
        found = predictor.predict(images)
        ids = list(range(start, start + len(chunk)))
        signals += measure_signals(ids, predictor, images, found, with_tta=True)
        predictions += found
    return {"signals": signals, "predictions": predictions, "fractured": [bool(r.boxes) for _, r in records]}


def mistakes_by_call(pool: dict[str, Any]) -> dict[str, list[int]]:
    return {name: [i for i, (p, truth) in enumerate(zip(pool["predictions"], pool["fractured"], strict=True))
                   if (call(p) >= CALL_THRESHOLD) != truth]
            for name, call in CALLS.items()}  # fmt: skip


def probabilities(pool: dict[str, Any]) -> np.ndarray:
    return np.array([CALLS["fracture probability"](prediction) for prediction in pool["predictions"]])


def expected_share(order: list[int], error_rates: np.ndarray, top: float) -> float:
    """The share of the mistakes expected among the first ``top`` of ``order``, each X-ray's call
    wrong with its ``error_rates`` probability."""
    first = order[: max(1, round(len(order) * top))]
    return float(error_rates[first].sum() / error_rates.sum())


def fitted_error_rates(p: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Each X-ray's chance of a wrong call, fitted to p by isotonic regression: rising with p below
    the call threshold (missed fractures), falling above it (false alarms)."""
    rates = np.zeros_like(p)
    for side, increasing in ((p < CALL_THRESHOLD, True), (p >= CALL_THRESHOLD, False)):
        if side.any():
            rates[side] = IsotonicRegression(increasing=increasing).fit_transform(p[side], wrong[side])
    return rates


def most_by_probability_alone(p: np.ndarray, mistakes: list[int], top: float) -> dict[str, float]:
    """What the best orders by p alone hold in the first ``top``: the expected share if p were
    calibrated, and the in-sample share by the isotonic fit (its sums over the pool's plateaus are
    the mistakes counted there, so a plateau cut by the top counts in proportion)."""
    wrong = np.zeros(len(p))
    wrong[mistakes] = 1.0
    calibrated = np.minimum(p, 1.0 - p)
    fitted = fitted_error_rates(p, wrong)
    return {
        "if_calibrated": expected_share([int(i) for i in np.argsort(-calibrated, kind="stable")], calibrated, top),
        "isotonic_in_sample": expected_share([int(i) for i in np.argsort(-fitted, kind="stable")], fitted, top),
    }


def share_in_top(order: list[int], mistakes: list[int], top: float) -> dict[str, Any]:
    """Share of ``mistakes`` among the first ``top`` of ``order``, with its Wilson 95% interval and
    the most that many places can hold."""
    first = set(order[: max(1, round(len(order) * top))])
    found = len(first & set(mistakes))
    interval = binomtest(found, len(mistakes)).proportion_ci(method="wilson") if mistakes else None
    return {"found": found, "mistakes": len(mistakes), "share": found / len(mistakes) if mistakes else None,
            "low": interval.low if interval else None, "high": interval.high if interval else None,
            "most": min(len(first), len(mistakes)) / len(mistakes) if mistakes else None}  # fmt: skip


def plot(result: dict[str, Any], out: Path) -> None:
    """Share of the mistakes in the queue's top 10% per acquisition and call, beside random and the
    most the top 10% can hold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["share_in_top"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(CALLS)
    for offset, call in enumerate(CALLS):
        rows = [result["share_in_top"][name][call]["top 10%"] for name in names]
        x = np.arange(len(names)) + (offset - (len(CALLS) - 1) / 2) * width
        ax.bar(x, [r["share"] for r in rows], width, label=f"call by {call}",
               yerr=[[r["share"] - r["low"] for r in rows], [r["high"] - r["share"] for r in rows]], capsize=2)
        ax.hlines(rows[0]["most"], x[0] - width / 2, x[-1] + width / 2, colors=f"C{offset}", linestyles="dotted")
    ax.axhline(TOPS[0], color="black", linewidth=0.8, linestyle="--", label="random")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("share of image-level mistakes in the top 10%")
    ax.set_title(f"{result['pool']}, {result['xrays']} X-rays (Wilson 95%; dotted: the most possible)", fontsize=9)
    ax.set_ylim(0, 0.65)
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--model", type=Path, help="A saved detector file (default: the shipped one).")
    parser.add_argument("--batch", type=int, default=20, help="The queue's diverse first batch (k-center).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/queue_mistakes.json"))
    args = parser.parse_args()

    model_file = args.model or verified_weights()
    # Another detector file comes without the validation X-rays its calibration would be fitted on.
    calibration = UNCALIBRATED if args.model else ProbabilityCalibration.from_dict(
        manifest()["metrics"]["validation"].get("probability_calibration"))
    pool = score_pool(model_file, calibration, args.data, args.splits, batch=16)
    candidates = list(range(len(pool["signals"])))
    mistakes = mistakes_by_call(pool)
    p = probabilities(pool)
    orders = {name: queue_order(name, pool["signals"], candidates, args.batch, seed=0)
              for name, acquisition in ACQUISITIONS.items() if acquisition is not None}  # fmt: skip
    result = {
        "model": str(model_file), "calibration": calibration.to_dict(),
        "pool": f"FracAtlas {' + '.join(args.splits)}", "xrays": len(candidates),
        "fractured": int(np.sum(pool["fractured"])), "call_threshold": CALL_THRESHOLD,
        "mistakes": {call: {"total": len(wrong), "missed_fractures": sum(pool["fractured"][i] for i in wrong)}
                     for call, wrong in mistakes.items()},
        "share_in_top": {name: {call: {f"top {top:.0%}": share_in_top(order, wrong, top) for top in TOPS}
                                for call, wrong in mistakes.items()} for name, order in orders.items()},
        "by_probability_alone": {
            "expected_mistakes_if_calibrated": float(np.minimum(p, 1.0 - p).sum()),
            "most_in_top_10%": most_by_probability_alone(p, mistakes["fracture probability"], TOPS[0]),
        },
        "xrays_scored": [{"fracture_probability": float(value), "fractured": truth}
                         for value, truth in zip(p, pool["fractured"], strict=True)],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(f"{result['xrays']} X-rays, {result['fractured']} fractured; mistakes {result['mistakes']}")
    for name, calls in result["share_in_top"].items():
        cells = [f"{call}: " + ", ".join(f"{top} {row['share']:.2f} ({row['low']:.2f}-{row['high']:.2f})"
                                         for top, row in rows.items()) for call, rows in calls.items()]  # fmt: skip
        print(f"{name:18s} " + " | ".join(cells))
    alone = result["by_probability_alone"]
    print(f"{result['mistakes']['fracture probability']['total']} mistakes, "
          f"{alone['expected_mistakes_if_calibrated']:.1f} if p were calibrated; the most a top 10% by p alone "
          f"holds: {alone['most_in_top_10%']}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
