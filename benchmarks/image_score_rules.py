"""How an X-ray's fracture probability is made from its detector's box scores, rule by rule.

Image-level AUROC ranks X-rays by one number per X-ray; the detector gives a score per box. The
rules below were tried on FracAtlas **val** with the shipped detector, and the one chosen there
(noisy-OR, :mod:`detection.image_score`) is then compared with the best box alone on FracAtlas
**test**, for the shipped detector and for every other detector whose test predictions are kept
under ``benchmarks/reported/`` (recipe ablations, shipped-model stages): models this choice was not
made on. Differences are paired bootstraps over the test X-rays.

    python -m benchmarks.image_score_rules --data ../shared/data/fracatlas \\
        --out benchmarks/reported/image_score_rules.json

Kept predictions drop boxes under 0.02 (``benchmarks.predictions.compact``), which the noisy-OR of
the full predictions includes; the shipped detector's rows use every box.
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
from sklearn.metrics import brier_score_loss, roc_auc_score

from benchmarks.predictions import expand
from fracture_al.detection.bootstrap import bootstrap_interval, paired_difference
from fracture_al.detection.data import CocoFile
from fracture_al.detection.evaluation import auroc_of, match_detections
from fracture_al.detection.image_score import fracture_probability
from fracture_al.detection.model_files import load_model
from fracture_al.detection.shipped_model import verified_weights
from fracture_al.detection.training import TrainConfig, evaluate_split, load_splits

REPORTED = Path("benchmarks/reported")


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    return np.sort(scores)[::-1][:count]


RULES: dict[str, Callable[[np.ndarray], float]] = {
    "best box": lambda s: float(s.max(initial=0.0)),
    "noisy-OR": fracture_probability,
    "noisy-OR of boxes >= 0.05": lambda s: fracture_probability(s[s >= 0.05]),
    "mean of the top two": lambda s: float(_top(s, 2).sum() / 2),
    "sum of the top three": lambda s: float(_top(s, 3).sum()),
    "sum of all boxes": lambda s: float(s.sum()),
    "boxes >= 0.5, then best box": lambda s: float((s >= 0.5).sum() + s.max(initial=0.0)),
}
CHOSEN = "noisy-OR"


def fractured(coco: CocoFile, predictions: list[dict[str, Any]]) -> np.ndarray:
    has_box = {record.image_id: bool(record.boxes) for record in coco.images}
    return np.array([has_box[p["image_id"]] for p in predictions])


def rule_table(coco: CocoFile, predictions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """AUROC and Brier score of every rule on one split."""
    truth = fractured(coco, predictions)
    table = {}
    for name, rule in RULES.items():
        values = np.array([rule(np.asarray(p["scores"], dtype=float)) for p in predictions])
        table[name] = {"auroc": float(roc_auc_score(truth, values))}
        if values.max() <= 1.0:  # a probability, so its calibration means something
            table[name]["brier"] = float(brier_score_loss(truth, values))
    return table


def chosen_against_best_box(coco: CocoFile, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Test AUROC by the best box and by the chosen rule, each with its interval, and their paired
    difference."""
    images = match_detections(coco, predictions)
    best_box = partial(auroc_of, rule=RULES["best box"])
    return {
        "best box": bootstrap_interval(images, best_box).to_dict(),
        CHOSEN: bootstrap_interval(images, auroc_of).to_dict(),
        "difference": paired_difference(images, images, best_box, statistic_b=auroc_of).to_dict(),
    }


def split_predictions(model_file: Path, data: Path) -> dict[str, tuple[CocoFile, list[dict[str, Any]]]]:
    """A saved detector's predictions on FracAtlas val and test, with each split's COCO file."""
    model, config = load_model(model_file)
    splits = load_splits(data, class_names=config.class_names)
    device = torch.device("cpu")
    return {name: (splits[name].coco, evaluate_split(model, splits[name], TrainConfig(), device,
                                                     flip_tta=config.flip_tta)[1])
            for name in ("val", "test")}  # fmt: skip


def kept_test_predictions() -> dict[str, list[dict[str, Any]]]:
    """Every detector's test predictions kept in a reported JSON, by that file's path."""
    kept = {}
    for path in sorted(REPORTED.rglob("*.json")):
        content = json.loads(path.read_text())
        rows = content.get("test_predictions") if isinstance(content, dict) else None
        if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "scores" in rows[0]:
            kept[str(path)] = expand(rows)
    return kept


def plot(models: dict[str, dict[str, Any]], out: Path) -> None:
    """Per model: test AUROC by each rule (left) and their paired difference (right), with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def errorbar(ax, interval: dict[str, float], row: float, **style) -> None:
        spread = [[interval["value"] - interval["low"]], [interval["high"] - interval["value"]]]
        ax.errorbar(interval["value"], row, xerr=spread, fmt="o", markersize=4, capsize=2, **style)

    names = sorted(models, key=lambda name: models[name]["best box"]["value"])
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(10, 0.32 * len(names) + 1.5),
                                      gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    for row, name in enumerate(names):
        errorbar(left, models[name]["best box"], row - 0.15, color="tab:grey", label="best box" if not row else None)
        errorbar(left, models[name][CHOSEN], row + 0.15, color="tab:blue", label=CHOSEN if not row else None)
        errorbar(right, models[name]["difference"], row, color="tab:blue")
    right.axvline(0.0, color="black", linewidth=0.8)
    left.set_yticks(range(len(names)), [Path(name).with_suffix("").as_posix().removeprefix(f"{REPORTED}/")
                                        for name in names], fontsize=7)  # fmt: skip
    left.set_xlabel("FracAtlas test image AUROC")
    right.set_xlabel(f"{CHOSEN} - best box (paired)")
    left.legend(loc="lower right")
    fig.suptitle("Image score from box scores, 95% bootstrap intervals over the 132 test X-rays")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image_score_rules.json"))
    args = parser.parse_args()

    shipped = split_predictions(verified_weights(), args.data)
    test_coco = shipped["test"][0]
    models = {"shipped detector": chosen_against_best_box(*shipped["test"])}
    models.update({path: chosen_against_best_box(test_coco, rows) for path, rows in kept_test_predictions().items()})
    ahead = sum(model["difference"]["value"] > 0 for model in models.values())
    result = {
        "chosen_on": "FracAtlas val, shipped detector",
        "rules_on_shipped": {name: rule_table(*pair) for name, pair in shipped.items()},
        "test_auroc_by_model": models,
        "models_where_chosen_is_ahead": f"{ahead} of {len(models)}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(models, args.out.with_suffix(".png"))
    for split, table in result["rules_on_shipped"].items():
        print(split, "  ".join(f"{name}: {row['auroc']:.3f}" for name, row in table.items()))
    for name, model in models.items():
        d = model["difference"]
        print(f"{name}: best box {model['best box']['value']:.3f}, {CHOSEN} {model[CHOSEN]['value']:.3f}, "
              f"difference {d['value']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})")
    print(f"{CHOSEN} ahead on {result['models_where_chosen_is_ahead']} models; wrote {args.out}")


if __name__ == "__main__":
    main()
