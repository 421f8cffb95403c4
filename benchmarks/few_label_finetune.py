"""Few-label fine-tuning under a body-part domain shift (see benchmarks/domain_shift.py).

A source model is trained on FracAtlas' non-hand train X-rays (once; cached in ``--out``), then
fine-tuned on 25 / 50 / 100 / 200 hand X-rays of train (nested random subsets) with each
fine-tuning recipe, and every model is tested on the hand X-rays of val + test (the target). Every
model is also tested on the "unseen pool": the hand X-rays of train outside the largest labelled
subset, which no model here trained on. It is three times the target's size, so it ranks recipes
with narrower intervals; the report gives both. Recipes:

    plain      the source recipe's learning rate and epochs, warm-started (the naive retrain)
    few_label  detection.recipes.few_label_train_config: lr x 0.25, 400 iterations, EMA 0.99
    low_lr     lr x 0.1, the source recipe's epochs
    frozen     few_label with only the last two backbone stages trainable

Each run's target-set predictions are saved, so paired bootstrap intervals can be computed
afterwards (``--report``).

    python -m benchmarks.few_label_finetune --stage source --epochs 20             # GPU
    for n in 25 50 100 200; do python -m benchmarks.few_label_finetune --stage finetune --size $n & done; wait
    python -m benchmarks.few_label_finetune --report

On the 2-core CPU: ``--recipe cpu --epochs 6`` for both stages, one run at a time. Every stage
resumes: a killed training continues from its checkpoint, finished runs are skipped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.domain_shift import domain_shift, labelled_subset, unlabelled_rest, write_dataset
from benchmarks.predictions import compact, expand
from fracture_al.detection.bootstrap import Interval, bootstrap_interval, paired_difference
from fracture_al.detection.devices import choose_device
from fracture_al.detection.digests import sha256_of
from fracture_al.detection.evaluation import ImageMatches, average_precision, match_detections
from fracture_al.detection.model_files import load_model, save_model
from fracture_al.detection.recipes import few_label_train_config, recipe
from fracture_al.detection.training import (
    DataSplit,
    Initialisation,
    TrainConfig,
    evaluate_split,
    fit,
    load_splits,
)

FINE_TUNE_RECIPES = ("plain", "few_label", "low_lr", "frozen")
SIZES = (25, 50, 100, 200)


def source_train_config(recipe_name: str, epochs: int) -> TrainConfig:
    """The named recipe's training settings for ``epochs`` epochs, with no time budget (a killed
    run resumes from its checkpoint, so the budget is the epochs)."""
    train = {**recipe(recipe_name).train, "epochs": epochs, "select_on": "mAP50", "time_budget_minutes": None}
    return replace(TrainConfig(), **train)


def unseen_pool(out: Path, data: Path, pool: dict[str, Any], seed: int) -> DataSplit:
    """The pool X-rays outside the largest labelled subset of ``seed``, as a split to test on."""
    rest = unlabelled_rest(pool, max(SIZES), seed)
    return load_splits(write_dataset(out / f"unseen-pool-{seed}", data / "images", rest))["train"]


def results_on_test_sets(model: torch.nn.Module, target: DataSplit, unseen: DataSplit, config: TrainConfig,
                         device: torch.device, flip_tta: bool, seed: int) -> dict[str, Any]:
    """Metrics and predictions on the target and on the unseen pool."""
    metrics, predictions = evaluate_split(model, target, config, device, flip_tta=flip_tta)
    unseen_metrics, unseen_predictions = evaluate_split(model, unseen, config, device, flip_tta=flip_tta)
    return {"target": metrics, "predictions": compact(predictions), "unseen_pool_seed": seed,
            "unseen_pool": unseen_metrics, "unseen_pool_predictions": compact(unseen_predictions)}


def train_source(out: Path, data: Path, recipe_name: str, epochs: int, seed: int,
                 device: torch.device) -> dict[str, Any]:
    parts = domain_shift(data)
    folder = write_dataset(out / "source", data / "images", parts["source"], parts["source_val"], parts["target"])
    splits = load_splits(folder)
    model_config, _ = recipe(recipe_name).configs(splits["train"].coco)
    train_config = source_train_config(recipe_name, epochs)
    outcome = fit(model_config, train_config, splits["train"], splits["val"], out / "runs" / "source",
                  device=device, init=Initialisation(), resume=True,
                  on_epoch=lambda s: print("source", json.dumps(s), flush=True))
    save_model(outcome.model, model_config, out / "source_model.pt")
    result = {"recipe": "source", "source_recipe": recipe_name, "labelled": 0,
              "source_sha256": sha256_of(out / "source_model.pt"),
              "selected_epoch": outcome.selected_epoch, "train_config": train_config.to_dict(),
              **results_on_test_sets(outcome.model, splits["test"], unseen_pool(out, data, parts["pool"], seed),
                                     train_config, device, model_config.flip_tta, seed)}
    (out / "source.json").write_text(json.dumps(result))
    return result


def fine_tune(out: Path, data: Path, size: int, name: str, recipe_name: str, source_epochs: int, seed: int,
              device: torch.device) -> dict[str, Any]:
    parts = domain_shift(data)
    folder = write_dataset(out / f"pool-{size}", data / "images", labelled_subset(parts["pool"], size, seed),
                           None, parts["target"])
    splits = load_splits(folder)
    _, model_config = load_model(out / "source_model.pt")
    base = replace(source_train_config(recipe_name, source_epochs), select_on=None, positive_fraction=None, seed=seed)
    if name == "plain":
        train_config = base
    elif name == "low_lr":
        train_config = replace(base, lr=base.lr * 0.1)
    else:
        train_config = few_label_train_config(base, size)
    if name == "frozen":
        model_config = replace(model_config, trainable_backbone_layers=2)
    outcome = fit(model_config, train_config, splits["train"], None, out / "runs" / f"{name}-{size}",
                  device=device, init=Initialisation(model_file=out / "source_model.pt"), resume=True)
    result = {"recipe": name, "labelled": size, "epochs": train_config.epochs, "lr": train_config.lr,
              "train_seconds": outcome.seconds, "source_sha256": sha256_of(out / "source_model.pt"),
              **results_on_test_sets(outcome.model, splits["test"], unseen_pool(out, data, parts["pool"], seed),
                                     train_config, device, model_config.flip_tta, seed)}
    (out / f"{name}-{size}.json").write_text(json.dumps(result))
    print(name, size, json.dumps(result["target"]), json.dumps(result["unseen_pool"]), flush=True)
    return result


def report(out: Path, data: Path) -> str:
    """Per recipe and labelled-set size: mAP@50 on the target and on the unseen pool, and each
    fine-tuned model's paired differences to the source model and to plain fine-tuning with their
    bootstrap 95% intervals over the X-rays of that test set."""
    runs = {(r["recipe"], r["labelled"]): r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*.json")))}
    if not runs:
        raise SystemExit(f"no results in {out}")
    # Training is deterministic on one kind of CPU, not across kinds: runs are paired only when they
    # share one source model. (Runs made before the hash was recorded carry none: a folder of them
    # only is taken as it is, mixed with hashed runs it is refused.)
    sources = {run.get("source_sha256") for run in runs.values()}
    if len(sources) > 1:
        raise SystemExit(f"runs in {out} were fine-tuned from {len(sources)} different source models")
    parts = domain_shift(data)
    target = matched(out / "report", data, parts["target"], runs, "predictions")
    target_intervals = average_precision_intervals(target)
    text = f"Target: the {len(parts['target']['images'])} hand X-rays of val + test\n\n"
    text += table(runs, target, target_intervals, "target")
    plot(target_intervals, out / "few_label.png", "target mAP@50 (hand X-rays of val + test)")
    tested = {key: run for key, run in runs.items() if "unseen_pool_predictions" in run}
    seeds = {run["unseen_pool_seed"] for run in tested.values()}
    if len(seeds) > 1:
        raise SystemExit(f"runs in {out} were tested on the unseen pools of different seeds: {sorted(seeds)}")
    if tested:
        rest = unlabelled_rest(parts["pool"], max(SIZES), seeds.pop())
        unseen = matched(out / "report-unseen-pool", data, rest, tested, "unseen_pool_predictions")
        unseen_intervals = average_precision_intervals(unseen)
        text += (f"\nUnseen pool: the {len(rest['images'])} hand X-rays of train outside the largest labelled "
                 f"subset\n\n" + table(tested, unseen, unseen_intervals, "unseen_pool"))
        plot(unseen_intervals, out / "few_label_unseen_pool.png", "mAP@50 (hand X-rays of train no model saw)")
    (out / "table.md").write_text(text)
    return text


def matched(folder: Path, data: Path, coco: dict[str, Any], runs: dict[tuple[str, int], dict[str, Any]],
            predictions: str) -> dict[tuple[str, int], list[ImageMatches]]:
    """Each run's saved ``predictions`` matched to the boxes of the X-rays in ``coco``."""
    ground_truth = load_splits(write_dataset(folder, data / "images", coco))["train"].coco
    return {key: match_detections(ground_truth, expand(run[predictions])) for key, run in runs.items()}


def average_precision_intervals(matches: dict[tuple[str, int], list[ImageMatches]]) -> dict[tuple[str, int], Interval]:
    """Each run's mAP@50 with its bootstrap 95% interval over the test X-rays."""
    return {key: bootstrap_interval(found, average_precision) for key, found in matches.items()}


def table(runs: dict[tuple[str, int], dict[str, Any]], matches: dict[tuple[str, int], list[ImageMatches]],
          intervals: dict[tuple[str, int], Interval], metrics: str) -> str:
    """One row per run: mAP@50 with its interval, AUROC, paired differences, training settings."""
    source = matches.get(("source", 0))

    def versus(reference: list | None, key: tuple[str, int]) -> str:
        if reference is None or reference is matches[key]:
            return "-"
        d = paired_difference(reference, matches[key], average_precision)
        return f"{d.value:+.3f} ({d.low:+.3f} to {d.high:+.3f})"

    lines = ["| recipe | labelled | mAP@50 (95% interval) | AUROC | vs source (95% interval) "
             "| vs plain (95% interval) | epochs | lr | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, size), run in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        key = (name, size)
        ap = intervals[key]
        training = (f"{run['epochs']} | {run['lr']:g} | {run['train_seconds']:.0f}" if name != "source"
                    else "- | - | -")
        lines.append(f"| {name} | {size} | {ap.value:.3f} ({ap.low:.3f}-{ap.high:.3f}) | "
                     f"{run[metrics]['auroc']:.3f} | {versus(source, key)} | "
                     f"{versus(matches.get(('plain', size)), key)} | {training} |")
    return "\n".join(lines) + "\n"


def plot(intervals: dict[tuple[str, int], Interval], path: Path, ylabel: str) -> None:
    """mAP@50 against labelled hand X-rays, one line per recipe, with 95% bootstrap bars; the source
    model (no labels) as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    source = intervals.get(("source", 0))
    if source is not None:
        axes.axhspan(source.low, source.high, color="grey", alpha=0.2)
        axes.axhline(source.value, color="grey", linestyle=":", label="source model (no hand labels)")
    for offset, name in enumerate(sorted({name for name, _ in intervals} - {"source"})):
        points = sorted((size, interval) for (recipe_name, size), interval in intervals.items()
                        if recipe_name == name)
        sizes = [size * (1 + 0.03 * offset) for size, _ in points]  # side by side, not on top of each other
        values = [interval.value for _, interval in points]
        bars = [[i.value - i.low for _, i in points], [i.high - i.value for _, i in points]]
        axes.errorbar(sizes, values, yerr=bars, marker="o", capsize=3, label=name)
    axes.set_xscale("log")
    axes.minorticks_off()
    axes.set_xticks(SIZES, [str(size) for size in SIZES])
    axes.set_xlim(min(SIZES) / 1.15, max(SIZES) * 1.15)  # room for the side-by-side points at the ends
    axes.set_xlabel("labelled hand X-rays")
    axes.set_ylabel(ylabel)
    axes.set_title("Few-label fine-tuning under the body-part shift (95% bootstrap intervals)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/few_label"))
    parser.add_argument("--stage", choices=["source", "finetune"])
    parser.add_argument("--size", type=int, action="append", help="Labelled hand X-rays (repeatable).")
    parser.add_argument("--recipes", nargs="+", default=list(FINE_TUNE_RECIPES), choices=FINE_TUNE_RECIPES)
    parser.add_argument("--recipe", default="gpu", choices=["cpu", "gpu"],
                        help="Source model's recipe (detection.recipes); plain fine-tuning repeats it.")
    parser.add_argument("--epochs", type=int, default=20, help="Source model's epochs (and plain fine-tuning's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = choose_device(args.device)
    if args.report:
        print(report(args.out, args.data))
    elif args.stage == "source":
        if (args.out / "source.json").exists():
            raise SystemExit(f"the source model in {args.out} is trained; delete source.json to train it again")
        train_source(args.out, args.data, args.recipe, args.epochs, args.seed, device)
    elif args.stage == "finetune":
        for size in args.size or SIZES:
            for name in args.recipes:
                if not (args.out / f"{name}-{size}.json").exists():  # finished runs are kept
                    fine_tune(args.out, args.data, size, name, args.recipe, args.epochs, args.seed, device)
    else:
        parser.error("--stage or --report is required")


if __name__ == "__main__":
    main()
