"""Simulated active learning on FracAtlas: does the sampler beat random labelling?

Per seed: a random initial labelled set and one model trained on it (round 0, shared by every
strategy); then per strategy, each round ranks the unlabelled pool with the review queue's own
code (``measure_signals`` + ``rank_tasks``, as the scoring jobs do), "labels" the first batch (its
ground truth is revealed), trains on the labelled set (warm-started from the previous round, as the
retraining loop does) and records test mAP@50. Also measured on every round's pool: which share of
the model's image-level mistakes (a fractured X-ray scored below 0.5, or a healthy one at or above
it) lands in the top 10% of the strategy's queue; random's expectation is 10%.

The full-data reference (all pool images labelled, same budget per round) gives the target: labels
needed to reach 95% of its test mAP@50. Saves JSON and a learning-curve plot.

Reduced setting for a 2-core CPU (48 min measured on an idle CPU; its result is in benchmarks/reported/):
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

from fracture_al.detection.data import CocoFile, CocoImage
from fracture_al.detection.devices import choose_device
from fracture_al.detection.images import load_image
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import save_model
from fracture_al.detection.training import DataSplit, Initialisation, TrainConfig, evaluate_split, fit
from fracture_al.integrations.task_predictions import measure_signals
from fracture_al.sampling.choices import Strategy, Uncertainty
from fracture_al.sampling.diversity import random_order
from fracture_al.sampling.queue import TaskSignals, rank_tasks

# Each acquisition the review queue can be set to (uncertainty, batch strategy); None = random.
ACQUISITIONS: dict[str, tuple[Uncertainty, Strategy] | None] = {
    "random": None,
    "least_confidence": ("least_confidence", "uncertainty"),
    "entropy": ("entropy", "uncertainty"),
    "margin": ("margin", "uncertainty"),
    "tta": ("tta", "uncertainty"),
    "entropy_k_center": ("entropy", "k_center"),
    "entropy_kmeans_pp": ("entropy", "kmeans_pp"),
}


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


@dataclass
class Round:
    """One trained model of a run and what it measured on the test set and on the unlabelled pool."""

    labelled: list[int]
    model_file: Path
    metrics: dict
    unlabelled: list[int]
    signals: list[TaskSignals]  # per unlabelled pool image, task id = pool index
    mistakes: set[int]  # unlabelled pool indices the model gets wrong at image level


def train_round(labelled: list[int], init: Initialisation, folder: Path, pool: Pool, test: DataSplit,
                args: argparse.Namespace, seed: int, device: torch.device, with_tta: bool) -> Round:  # fmt: skip
    """Train on the labelled pool images (warm-started from ``init``), test, and score the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    model_config = model_config_for(args, test)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, workers=0, seed=seed)
    outcome = fit(model_config, train_config, pool.subset(labelled, folder, "train"), None, folder,
                  device=device, init=init)  # fmt: skip
    metrics, _ = evaluate_split(outcome.model, test, train_config, device, description="test")
    save_model(outcome.model, model_config, folder / "model.pt")
    unlabelled = sorted(set(range(len(pool.records))) - set(labelled))
    predictor = Predictor(outcome.model, model_config, device, folder.name)
    images = [load_image(pool.image_dir / pool.records[i].file_name) for i in unlabelled]
    predictions = predictor.predict(images)
    signals = measure_signals(unlabelled, predictor, images, predictions, with_tta=with_tta)
    mistakes = {
        index
        for index, prediction in zip(unlabelled, predictions, strict=True)
        if (prediction.image_score >= train_config.image_threshold) != bool(pool.records[index].boxes)
    }
    return Round(labelled, folder / "model.pt", metrics, unlabelled, signals, mistakes)


def queue_order(acquisition: str, round_: Round, batch: int, seed: int) -> list[int]:
    """The unlabelled pool indices in the order the acquisition would have them labelled."""
    if ACQUISITIONS[acquisition] is None:
        return [round_.unlabelled[i] for i in random_order(len(round_.unlabelled), seed)]
    uncertainty, strategy = ACQUISITIONS[acquisition]
    queue = rank_tasks(round_.signals, uncertainty=uncertainty, strategy=strategy, batch_size=batch, seed=seed)
    return [entry.task_id for entry in queue]


def mistakes_in_top_decile(order: list[int], mistakes: set[int]) -> float | None:
    """Share of the model's image-level mistakes among the first tenth of the queue (random: 0.1)."""
    if not order or not mistakes:
        return None
    top = set(order[: max(1, len(order) // 10)])
    return len(mistakes & top) / len(mistakes)


def model_config_for(args: argparse.Namespace, test: DataSplit) -> ModelConfig:
    return ModelConfig(min_size=args.min_size, max_size=int(args.min_size * 1.6), class_names=test.coco.class_names)


def run_seed(seed: int, pool: Pool, test: DataSplit, args: argparse.Namespace, device: torch.device,
             work: Path) -> list[dict]:  # fmt: skip
    """Every acquisition from the same random start: round 0 is trained once and shared."""
    with_tta = "tta" in args.strategies
    initial = [int(i) for i in np.random.default_rng(seed).choice(len(pool.records), size=args.initial, replace=False)]
    first = train_round(initial, Initialisation(), work / f"s{seed}-r0", pool, test, args, seed, device, with_tta)
    rows = []
    for acquisition in args.strategies:
        current = first
        for round_number in range(args.rounds + 1):
            order = queue_order(acquisition, current, args.batch, seed * 100 + round_number)
            row = {"strategy": acquisition, "seed": seed, "round": round_number, "labelled": len(current.labelled),
                   "test_mAP50": current.metrics["mAP50"], "test_auroc": current.metrics["auroc"],
                   "mistakes_in_top_10pct": mistakes_in_top_decile(order, current.mistakes)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not order or round_number == args.rounds:
                break
            # The next batch is "labelled"; warm start from this round's model, as the retraining loop does.
            current = train_round(current.labelled + order[: args.batch], Initialisation(model_file=current.model_file),
                                  work / f"{acquisition}-s{seed}-r{round_number + 1}", pool, test, args, seed, device,
                                  with_tta)  # fmt: skip
    return rows


def labels_to_reach(rows: list[dict], target: float) -> int | None:
    if target <= 0:
        return None  # a reference model that finds nothing sets no target
    for row in sorted(rows, key=lambda r: r["labelled"]):
        if row["test_mAP50"] is not None and row["test_mAP50"] >= target:
            return row["labelled"]
    return None


def curve(rows: list[dict], strategy: str, metric: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Labelled-set sizes and the metric's mean and sd over seeds, for one strategy."""
    by_size: dict[int, list[float]] = {}
    for row in rows:
        if row["strategy"] == strategy and row.get(metric) is not None:
            by_size.setdefault(row["labelled"], []).append(row[metric])
    sizes = sorted(by_size)
    return sizes, np.array([np.mean(by_size[s]) for s in sizes]), np.array([np.std(by_size[s]) for s in sizes])


def plot(rows: list[dict], reference: float, path: Path) -> None:
    """Learning curves (test mAP@50) beside the share of mistakes each queue puts in its top 10%."""
    figure, (learning, mistakes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for axis, metric in ((learning, "test_mAP50"), (mistakes, "mistakes_in_top_10pct")):
            sizes, means, spread = curve(rows, strategy, metric)
            axis.plot(sizes, means, marker="o", label=strategy)
            axis.fill_between(sizes, means - spread, means + spread, alpha=0.15)
    learning.axhline(0.95 * reference, color="grey", linestyle="--", label="95% of full-data mAP@50")
    learning.set_ylabel("test mAP@50 (mean ± sd over seeds)")
    mistakes.axhline(0.1, color="grey", linestyle="--", label="expected at random")
    mistakes.set_ylabel("image-level mistakes in the queue's top 10%")
    for axis in (learning, mistakes):
        axis.set_xlabel("labelled X-rays")
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
        "--strategies", nargs="+", default=["random", "entropy", "entropy_k_center"], choices=ACQUISITIONS
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
        rows += run_seed(seed, pool, test, args, device, work)

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
