"""Simulated active learning on FracAtlas: does the sampler beat random labelling?

Per seed: a random initial labelled set; per strategy, each round trains on the labelled set
(warm-started from the previous round), records test mAP@50, scores the unlabelled pool and
"labels" the next batch (its ground truth is revealed). Also measured on every round's pool: which
share of the model's image-level mistakes (a fractured X-ray scored below 0.5, or a healthy one at
or above it) lands in the top 10% of the strategy's queue; random's expectation is 10%.

The full-data reference (all pool images labelled, same budget per round) gives the target: labels
needed to reach 95% of its test mAP@50. Saves JSON and a learning-curve plot.

Reduced setting for a 2-core CPU (under an hour when the CPU is otherwise idle):
    python benchmarks/active_learning.py --pool 200 --initial 30 --batch 30 --rounds 3 --epochs 2 \\
        --min-size 320 --test-limit 100 --strategies random entropy_k_center --seeds 0 1 2
Full setting for a GPU:
    python benchmarks/active_learning.py --pool 0 --initial 100 --batch 100 --rounds 8 --epochs 4 \\
        --strategies random least_confidence entropy margin tta entropy_k_center --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from detection.data import CocoFile, CocoImage
from detection.images import load_image
from detection.model import ModelConfig
from detection.predictor import Predictor
from detection.store import save_model
from detection.training import DataSplit, Initialisation, TrainConfig, choose_device, evaluate_split, fit
from sampling.diversity import random_order, review_order
from sampling.uncertainty import image_uncertainty, localization_instability

STRATEGIES = ("random", "least_confidence", "entropy", "margin", "tta", "entropy_k_center")


@dataclass
class Pool:
    records: list[CocoImage]
    image_dir: Path
    source: CocoFile

    def subset(self, indices: list[int], folder: Path, name: str) -> DataSplit:
        """A COCO file of the chosen pool images, for the trainer."""
        chosen = [self.records[i] for i in indices]
        ids = {record.image_id for record in chosen}
        content = {
            "images": [
                {"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height} for r in chosen
            ],
            "annotations": [a for a in self.source.content["annotations"] if a["image_id"] in ids],
            "categories": self.source.content["categories"],
        }
        path = folder / f"{name}.json"
        path.write_text(json.dumps(content))
        return DataSplit.load(path, self.image_dir)


def queue_order(strategy: str, predictor: Predictor, images: list, seed: int, top_k: int) -> list[int]:
    if strategy == "random":
        return random_order(len(images), seed)
    predictions = predictor.predict(images)
    if strategy == "tta":
        views = predictor.predict_augmented(images)
        scores = [
            localization_instability(p.boxes, p.scores, [(v.boxes, v.scores) for v in augmented])
            for p, augmented in zip(predictions, views, strict=True)
        ]
        return review_order(np.array(scores), None, top_k=top_k, strategy="uncertainty")
    method = "entropy" if strategy == "entropy_k_center" else strategy
    scores = np.array([image_uncertainty(p.scores, method, "max") for p in predictions])
    if strategy == "entropy_k_center":
        return review_order(scores, predictor.embed(images), top_k=top_k, strategy="k_center", seed=seed)
    return review_order(scores, None, top_k=top_k, strategy="uncertainty")


def mistakes_in_top_decile(order: list[int], image_scores: list[float], truth: list[bool]) -> float | None:
    mistakes = {
        i for i, (score, positive) in enumerate(zip(image_scores, truth, strict=True)) if (score >= 0.5) != positive
    }
    if not mistakes:
        return None
    top = set(order[: max(1, len(order) // 10)])
    return len(mistakes & top) / len(mistakes)


def model_config_for(args: argparse.Namespace, test: DataSplit) -> ModelConfig:
    return ModelConfig(min_size=args.min_size, max_size=int(args.min_size * 1.6), class_names=test.coco.class_names)


def run_strategy(
    strategy: str, seed: int, pool: Pool, test: DataSplit, args, device: torch.device, work: Path
) -> list[dict]:
    rng = np.random.default_rng(seed)
    labelled = [int(i) for i in rng.choice(len(pool.records), size=args.initial, replace=False)]
    model_config = model_config_for(args, test)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, workers=0, seed=seed)
    init, rows = Initialisation(), []
    for round_number in range(args.rounds + 1):
        folder = work / f"{strategy}-s{seed}-r{round_number}"
        folder.mkdir(parents=True, exist_ok=True)
        outcome = fit(model_config, train_config, pool.subset(labelled, folder, "train"), None, folder,
                      device=device, init=init)  # fmt: skip
        metrics, _ = evaluate_split(outcome.model, test, train_config, device, description="test")
        save_model(outcome.model, model_config, folder / "model.pt")
        init = Initialisation(model_file=folder / "model.pt")  # warm start the next round
        row = {"strategy": strategy, "seed": seed, "round": round_number, "labelled": len(labelled),
               "test_mAP50": metrics["mAP50"], "test_auroc": metrics["auroc"]}  # fmt: skip
        unlabelled = [i for i in range(len(pool.records)) if i not in set(labelled)]
        if unlabelled:
            predictor = Predictor(outcome.model, model_config, device, f"round{round_number}")
            images = [load_image(pool.image_dir / pool.records[i].file_name) for i in unlabelled]
            order = queue_order(strategy, predictor, images, seed * 100 + round_number, args.batch)
            image_scores = [p.image_score for p in predictor.predict(images)]
            truth = [bool(pool.records[i].boxes) for i in unlabelled]
            row["mistakes_in_top_10pct"] = mistakes_in_top_decile(order, image_scores, truth)
            labelled += [unlabelled[i] for i in order[: args.batch]]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if round_number == args.rounds or not unlabelled:
            break
    return rows


def labels_to_reach(rows: list[dict], target: float) -> int | None:
    if target <= 0:
        return None  # a reference model that finds nothing sets no target
    for row in sorted(rows, key=lambda r: r["labelled"]):
        if row["test_mAP50"] is not None and row["test_mAP50"] >= target:
            return row["labelled"]
    return None


def plot(rows: list[dict], reference: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in sorted({r["strategy"] for r in rows}):
        by_size: dict[int, list[float]] = {}
        for row in rows:
            if row["strategy"] == strategy:
                by_size.setdefault(row["labelled"], []).append(row["test_mAP50"] or 0.0)
        sizes = sorted(by_size)
        means = np.array([np.mean(by_size[s]) for s in sizes])
        spread = np.array([np.std(by_size[s]) for s in sizes])
        axis.plot(sizes, means, marker="o", label=strategy)
        axis.fill_between(sizes, means - spread, means + spread, alpha=0.15)
    axis.axhline(0.95 * reference, color="grey", linestyle="--", label="95% of full-data mAP@50")
    axis.set_xlabel("labelled X-rays")
    axis.set_ylabel("test mAP@50 (mean ± sd over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--pool", type=int, default=300, help="train images used as the pool (0 = all)")
    parser.add_argument("--initial", type=int, default=40)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--test-limit", type=int, default=0, help="test images used (0 = all), a fixed random subset")
    parser.add_argument(
        "--strategies", nargs="+", default=["random", "entropy", "entropy_k_center"], choices=STRATEGIES
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/active_learning"))
    args = parser.parse_args()

    device = choose_device("auto")
    source = CocoFile(args.data / "train.json")
    records = (
        source.images if not args.pool else list(np.random.default_rng(1234).permutation(source.images))[: args.pool]
    )
    pool = Pool(list(records), args.data / "images", source)
    work = args.out / time.strftime("run-%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    test_source = CocoFile(args.data / "test.json")
    test_records = list(np.random.default_rng(4321).permutation(test_source.images))
    test_pool = Pool(test_records[: args.test_limit or None], args.data / "images", test_source)
    test = test_pool.subset(list(range(len(test_pool.records))), work, "test")

    rows = []
    for seed in args.seeds:
        for strategy in args.strategies:
            rows += run_strategy(strategy, seed, pool, test, args, device, work)

    # Full-data reference: every pool image labelled, trained for the same total number of rounds.
    full_config = TrainConfig(epochs=args.epochs * (args.rounds + 1), batch_size=args.batch_size, workers=0)
    everything = pool.subset(list(range(len(pool.records))), work, "full")
    full = fit(model_config_for(args, test), full_config, everything, None, work / "full", device=device,
               init=Initialisation())  # fmt: skip
    reference = evaluate_split(full.model, test, TrainConfig(), device)[0]["mAP50"] or 0.0

    summary = {}
    for strategy in args.strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        deciles = [r["mistakes_in_top_10pct"] for r in mine if r.get("mistakes_in_top_10pct") is not None]
        summary[strategy] = {
            "labels_to_95pct_of_full": [labels_to_reach([r for r in mine if r["seed"] == s], 0.95 * reference)
                                        for s in args.seeds],
            "mean_final_mAP50": float(np.mean([r["test_mAP50"] or 0 for r in mine if r["round"] == args.rounds])),
            "mean_mistakes_in_top_10pct": float(np.mean(deciles)) if deciles else None,
        }  # fmt: skip
    result = {
        "device": str(device),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "full_data_mAP50": reference,
        "pool_size": len(pool.records),
        "rounds": rows,
        "summary": summary,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    plot(rows, reference, work / "learning_curves.png")
    print(f"full-data test mAP@50 {reference:.3f}")
    print(f"{'strategy':<18} {'final mAP@50':>12} {'labels to 95%':>22} {'mistakes in top 10%':>20}")
    for strategy, values in summary.items():
        decile = values["mean_mistakes_in_top_10pct"]
        print(f"{strategy:<18} {values['mean_final_mAP50']:>12.3f} {values['labels_to_95pct_of_full']!s:>22} "
              f"{'-' if decile is None else f'{decile:.0%}':>20}")  # fmt: skip
    print(f"saved {work / 'result.json'} and {work / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
