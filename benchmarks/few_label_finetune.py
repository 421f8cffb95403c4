"""Few-label fine-tuning under a body-part domain shift (see benchmarks/domain_shift.py).

A source model is trained on FracAtlas' non-hand train X-rays (once; cached in ``--out``), then
fine-tuned on 25 / 50 / 100 / 200 hand X-rays of train (nested random subsets) with each
fine-tuning recipe, and every model is tested on the hand X-rays of val + test. Recipes:

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

from benchmarks.domain_shift import domain_shift, labelled_subset, write_dataset
from benchmarks.predictions import compact, expand
from fracture_al.detection.bootstrap import Interval, bootstrap_interval, paired_difference
from fracture_al.detection.devices import choose_device
from fracture_al.detection.evaluation import average_precision, match_detections
from fracture_al.detection.recipes import few_label_train_config, recipe
from fracture_al.detection.store import load_model, save_model
from fracture_al.detection.training import Initialisation, TrainConfig, evaluate_split, fit, load_splits

FINE_TUNE_RECIPES = ("plain", "few_label", "low_lr", "frozen")
SIZES = (25, 50, 100, 200)


def source_train_config(recipe_name: str, epochs: int) -> TrainConfig:
    """The named recipe's training settings for ``epochs`` epochs, with no time budget (a killed
    run resumes from its checkpoint, so the budget is the epochs)."""
    train = {**recipe(recipe_name).train, "epochs": epochs, "select_on": "mAP50", "time_budget_minutes": None}
    return replace(TrainConfig(), **train)


def train_source(out: Path, data: Path, recipe_name: str, epochs: int, device: torch.device) -> dict[str, Any]:
    parts = domain_shift(data)
    folder = write_dataset(out / "source", data / "images", parts["source"], parts["source_val"], parts["target"])
    splits = load_splits(folder)
    model_config, _ = recipe(recipe_name).configs(splits["train"].coco)
    train_config = source_train_config(recipe_name, epochs)
    outcome = fit(model_config, train_config, splits["train"], splits["val"], out / "runs" / "source",
                  device=device, init=Initialisation(), resume=True,
                  on_epoch=lambda s: print("source", json.dumps(s), flush=True))
    save_model(outcome.model, model_config, out / "source_model.pt")
    metrics, predictions = evaluate_split(outcome.model, splits["test"], train_config, device,
                                          flip_tta=model_config.flip_tta)
    result = {"recipe": "source", "source_recipe": recipe_name, "labelled": 0, "target": metrics,
              "selected_epoch": outcome.selected_epoch,
              "train_config": train_config.to_dict(), "predictions": compact(predictions)}
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
    metrics, predictions = evaluate_split(outcome.model, splits["test"], train_config, device,
                                          flip_tta=model_config.flip_tta)
    result = {"recipe": name, "labelled": size, "target": metrics, "epochs": train_config.epochs,
              "lr": train_config.lr, "train_seconds": outcome.seconds, "predictions": compact(predictions)}
    (out / f"{name}-{size}.json").write_text(json.dumps(result))
    print(name, size, json.dumps(metrics), flush=True)
    return result


def report(out: Path, data: Path) -> str:
    """Target mAP@50 per recipe and labelled-set size, and each fine-tuned model's paired differences
    to the source model and to plain fine-tuning with their bootstrap 95% intervals over the target
    X-rays."""
    folder = write_dataset(out / "report", data / "images", domain_shift(data)["target"])
    coco = load_splits(folder)["train"].coco
    runs = {(r["recipe"], r["labelled"]): r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*.json")))}
    if not runs:
        raise SystemExit(f"no results in {out}")
    matches = {key: match_detections(coco, expand(run["predictions"])) for key, run in runs.items()}
    source = matches.get(("source", 0))

    def versus(reference: list | None, key: tuple[str, int]) -> str:
        if reference is None or reference is matches[key]:
            return "-"
        d = paired_difference(reference, matches[key], average_precision)
        return f"{d.value:+.3f} ({d.low:+.3f} to {d.high:+.3f})"

    intervals = {key: bootstrap_interval(found, average_precision) for key, found in matches.items()}
    lines = ["| recipe | labelled | target mAP@50 (95% interval) | AUROC | vs source (95% interval) "
             "| vs plain (95% interval) | epochs | lr | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, size), run in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        key = (name, size)
        ap = intervals[key]
        training = (f"{run['epochs']} | {run['lr']:g} | {run['train_seconds']:.0f}" if name != "source"
                    else "- | - | -")
        lines.append(f"| {name} | {size} | {ap.value:.3f} ({ap.low:.3f}-{ap.high:.3f}) | "
                     f"{run['target']['auroc']:.3f} | {versus(source, key)} | "
                     f"{versus(matches.get(('plain', size)), key)} | {training} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    plot(intervals, out / "few_label.png")
    return table


def plot(intervals: dict[tuple[str, int], Interval], path: Path) -> None:
    """Target mAP@50 against labelled hand X-rays, one line per recipe, with 95% bootstrap bars;
    the source model (no labels) as a band."""
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
    axes.set_xlabel("labelled hand X-rays")
    axes.set_ylabel("target mAP@50 (hand X-rays of val + test)")
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
        train_source(args.out, args.data, args.recipe, args.epochs, device)
    elif args.stage == "finetune":
        for size in args.size or SIZES:
            for name in args.recipes:
                if not (args.out / f"{name}-{size}.json").exists():  # finished runs are kept
                    fine_tune(args.out, args.data, size, name, args.recipe, args.epochs, args.seed, device)
    else:
        parser.error("--stage or --report is required")


if __name__ == "__main__":
    main()
