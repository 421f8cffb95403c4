"""Ablation of the detector's training recipe on FracAtlas: one lever at a time, same seed, same budget.

Every variant is the ``base`` recipe with one lever changed (``all`` turns every lever on and
doubles the schedule); each trains on FracAtlas train, selects nothing (the last epoch is
evaluated) and is tested on FracAtlas test with and without horizontal-flip TTA. One variant per
process, so variants can run side by side on one GPU; ``--report`` gathers their JSON into a
table (markdown) and a plot.

    # GPU, all variants side by side (what benchmarks/reported/recipe_ablation_gpu.* came from):
    for v in base res800 multiscale anchors positives ema light_head long all; do
        python benchmarks/recipe_ablation.py --variant $v --epochs 10 --out runs/ablation &
    done; wait
    python benchmarks/recipe_ablation.py --report runs/ablation \\
        --title "H100, 10 epochs, img/s measured with the variants side by side"

On the 2-core CPU, the issue's budget of 60 minutes of training per variant (the schedule is
shortened to the epochs that fit, as the ``cpu`` recipe's is), one variant at a time with the
machine to itself. The 2-core machines differ about twofold in speed, between kinds of CPU
(``benchmarks.processor``) and between machines of one kind (an AMD EPYC with AVX-512 trained base
at 3.0 images/s on one machine, 2.0 on another), so a variant compares only with a base run made on
the same machine, in the same folder. Each run records its kind of CPU and ``--report`` refuses a
mix of kinds; two machines of one kind it cannot tell apart from a lever's own cost:

    python -m benchmarks.recipe_ablation --variant base --epochs 12 --time-budget 60 --batch-size 4 --lr 0.01 \\
        --workers 1 --out benchmarks/results/recipe_ablation_cpu60   # then its JSON to benchmarks/reported/

``--report`` adds each variant's paired bootstrap difference to base on the test X-rays when their
predictions were kept (runs from before they were have none).

``--speed SECONDS`` measures a variant's cost instead of its accuracy, on a machine too slow to
train every variant (the 2-core CPU): that many seconds of training iterations from ImageNet
weights, inference on 40 test X-rays, and the half-precision file size. One variant at a time, with
the machine to itself:

    for v in base res800 multiscale anchors positives ema light_head all; do
        python -m benchmarks.recipe_ablation --variant $v --speed 90 --batch-size 4 --lr 0.01 --workers 1 \\
            --out benchmarks/reported/recipe_ablation_cpu_cost
    done
    python -m benchmarks.recipe_ablation --report benchmarks/reported/recipe_ablation_cpu_cost \\
        --title "2-core AMD EPYC CPU without AVX-512"
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.compare_detectors import METRICS, compare
from benchmarks.predictions import compact, expand
from benchmarks.processor import device_name
from fracture_al.detection.data import eval_transforms, train_transforms
from fracture_al.detection.devices import choose_device
from fracture_al.detection.engine import LossLog, train_one_epoch
from fracture_al.detection.evaluation import match_detections, metrics_with_intervals
from fracture_al.detection.recipes import Recipe
from fracture_al.detection.training import (
    Initialisation,
    TrainConfig,
    evaluate_split,
    fit,
    initial_model,
    load_splits,
    make_loader,
    make_optimizer,
    prepare_for_training,
    seed_everything,
    weight_average,
)

HIGH_RES = {"min_size": 800, "max_size": 1333}
# Training before the speed is timed: the first iterations allocate and start the loader.
SPEED_WARM_UP_SECONDS = 20


def variants(epochs: int, batch_size: int, lr: float, workers: int) -> dict[str, Recipe]:
    base_train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "workers": workers}
    levers: dict[str, tuple[str, dict[str, Any], dict[str, Any], bool]] = {
        "base": ("512 px, default anchors, 1024-wide box head", {}, {}, False),
        "res800": ("800 px input", HIGH_RES, {}, False),
        "multiscale": ("shorter side drawn from 384-640 px in training", {"train_min_sizes": [384, 448, 576, 640]}, {},
                       False),
        "anchors": ("anchors fitted to the training boxes", {}, {}, True),
        "positives": ("X-rays with a fracture at 65% of draws", {}, {"positive_fraction": 0.65}, False),
        # Between the train split's natural 46% and 65%: oversampling buys box mAP@50 and costs image AUROC.
        "positives_55": ("X-rays with a fracture at 55% of draws", {}, {"positive_fraction": 0.55}, False),
        "ema": ("weight EMA (decay 0.998)", {}, {"ema_decay": 0.998}, False),
        "light_head": ("256-wide box head", {"box_head_size": 256}, {}, False),
        # Buys epochs rather than capacity: no backward pass through MobileNetV2's first 14 blocks.
        "frozen_backbone": ("backbone trained from block 14 on (2 of 6 stages; base 4)",
                            {"trainable_backbone_layers": 2}, {}, False),
        # Also buys epochs: on a CPU with AMX, fewer and cheaper memory passes.
        "cpu_bf16": ("bfloat16 autocast (CPU with AMX)", {}, {"cpu_bf16": True}, False),
        "long": (f"{2 * epochs} epochs", {}, {"epochs": 2 * epochs}, False),
        "all": (
            "800 px, multi-scale 640-960, fitted anchors, 65% fractures, EMA, double schedule",
            {**HIGH_RES, "train_min_sizes": [640, 704, 768, 832, 896, 960]},
            {"positive_fraction": 0.65, "ema_decay": 0.998, "epochs": 2 * epochs},
            True,
        ),
    }
    return {
        name: Recipe(name, description, model=model, train={**base_train, **train}, fit_anchors=anchors)
        for name, (description, model, train, anchors) in levers.items()
    }


@torch.inference_mode()
def inference_images_per_second(model: torch.nn.Module, split, config: TrainConfig, device: torch.device) -> float:
    loader = make_loader(split.dataset(eval_transforms()), TrainConfig(batch_size=1, workers=0), device, shuffle=False)
    images = [batch[0][0].to(device) for _, batch in zip(range(40), loader, strict=False)]
    model.eval()
    for image in images[:5]:  # warm-up
        model([image])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for image in images:
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            model([image])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started)


def run_variant(recipe: Recipe, data: Path, out: Path, device: torch.device, seed: int) -> dict[str, Any]:
    splits = load_splits(data)
    model_config, train_config = recipe.configs(splits["train"].coco, train=TrainConfig(seed=seed))
    outcome = fit(
        model_config,
        train_config,
        splits["train"],
        splits["val"],
        out / "runs" / recipe.name,
        device=device,
        init=Initialisation(),
        on_epoch=lambda summary: print(recipe.name, json.dumps(summary), flush=True),
    )
    test, test_predictions = evaluate_split(outcome.model, splits["test"], train_config, device)
    test_tta, _ = evaluate_split(outcome.model, splits["test"], train_config, device, flip_tta=True)
    return {
        "variant": recipe.name,
        "description": recipe.description,
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "device": device_name(device),
        "epochs_run": len(outcome.epochs),
        "train_minutes": outcome.seconds / 60,
        "train_images_per_second": outcome.images_per_second,
        "inference_images_per_second": inference_images_per_second(outcome.model, splits["test"], train_config, device),
        "validation_per_epoch": [
            {k: v for k, v in epoch.items() if k != "image_threshold"} for epoch in outcome.epochs
        ],
        "test": test,
        "test_flip_tta": test_tta,
        "test_predictions": compact(test_predictions),
    }


def measure_speed(recipe: Recipe, data: Path, device: torch.device, seed: int, seconds: float) -> dict[str, Any]:
    """What a variant costs: training images/s over ``seconds`` of iterations (after a warm-up),
    inference images/s, and its weights' size in half precision."""
    splits = load_splits(data)
    model_config, train_config = recipe.configs(splits["train"].coco, train=TrainConfig(seed=seed))
    seed_everything(seed)
    model, _ = initial_model(model_config, Initialisation())
    bf16 = prepare_for_training(model, model_config, train_config, device)
    # A long nominal schedule: the measured iterations sit at the peak learning rate, as most of a run does.
    optimizer, scheduler = make_optimizer(model, train_config, total_iterations=100_000)
    averaged = weight_average(model, train_config)
    loader = make_loader(splits["train"].dataset(train_transforms()), train_config, device, shuffle=True, epoch=1)

    def train_for(limit: float) -> tuple[int, float]:
        started = time.monotonic()
        iterations = train_one_epoch(model, optimizer, scheduler, loader, device, 1, LossLog(), bf16=bf16,
                                     averaged=averaged, deadline=started + limit)  # fmt: skip
        return iterations, time.monotonic() - started

    train_for(SPEED_WARM_UP_SECONDS)
    iterations, elapsed = train_for(seconds)
    served = averaged.module if averaged is not None else model
    return {
        "variant": recipe.name,
        "description": recipe.description,
        "speed_only": True,
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "train_images": len(splits["train"].coco.images),
        "train_iterations": iterations,
        "train_images_per_second": iterations * train_config.batch_size / elapsed,
        "inference_images_per_second": inference_images_per_second(served, splits["test"], train_config, device),
        "half_precision_mb": sum(p.numel() for p in served.state_dict().values()) * 2 / 1e6,
    }


COLUMNS = (
    ("test mAP@50", lambda r: r["test"]["mAP50"]),
    ("test mAP@75", lambda r: r["test"]["mAP75"]),
    ("test AR@100", lambda r: r["test"]["AR100"]),
    ("test AUROC", lambda r: r["test"]["auroc"]),
    ("+flip TTA mAP@50", lambda r: r["test_flip_tta"]["mAP50"]),
    ("+flip TTA AUROC", lambda r: r["test_flip_tta"]["auroc"]),
    ("train img/s", lambda r: r["train_images_per_second"]),
    ("infer img/s", lambda r: r["inference_images_per_second"]),
)


def differences_to_base(results: list[dict[str, Any]], data: Path) -> dict[str, dict[str, Any]]:
    """Each variant minus base on the same test X-rays (``compare_detectors.compare``'s rows), for
    the variants whose predictions were kept (runs from before ``test_predictions`` was saved have
    none: no column then)."""
    base = next((r for r in results if r["variant"] == "base" and "test_predictions" in r), None)
    if base is None:
        return {}
    coco = load_splits(data)["test"].coco
    base_matches = match_detections(coco, expand(base["test_predictions"]))
    return {
        result["variant"]: compare(base_matches, match_detections(coco, expand(result["test_predictions"])))
        for result in results
        if result["variant"] != "base" and "test_predictions" in result
    }


def intervals(results: list[dict[str, Any]], data: Path) -> list[str]:
    """Each variant's own test mAP@50 and AUROC with bootstrap 95% intervals over the X-rays, as
    table lines, for the variants whose predictions were kept."""
    kept = [result for result in results if "test_predictions" in result]
    if not kept:
        return []
    coco = load_splits(data)["test"].coco
    lines = ["", "| variant | test mAP@50 (95%) | test AUROC (95%) |", "|---|---|---|"]
    for result in kept:
        own = metrics_with_intervals(coco, expand(result["test_predictions"]))
        cells = [f"{own[name]['value']:.3f} ({own[name]['low']:.3f} to {own[name]['high']:.3f})"
                 for name in ("mAP50", "auroc")]  # fmt: skip
        lines.append(f"| {result['variant']} | " + " | ".join(cells) + " |")
    return [*lines, "", "Intervals: bootstrap over the test X-rays (1,000 resamples)."]


def difference_cell(row: dict[str, Any]) -> str:
    if row["b_minus_a"] is None:
        return "-"
    return f"{row['b_minus_a']:+.3f} ({row['low']:+.3f} to {row['high']:+.3f})"


def report(folder: Path, title: str, data: Path) -> str:
    results = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    if not results:
        raise SystemExit(f"no variant results in {folder}")
    order = list(variants(1, 1, 0.0, 0))
    results.sort(key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
    speed_only = {bool(result.get("speed_only")) for result in results}
    if len(speed_only) > 1:
        raise SystemExit(f"{folder} mixes speed-only (--speed) and trained variants: report them from separate folders")
    devices = {result["device"] for result in results}
    if len(devices) > 1:
        raise SystemExit(f"{folder} mixes runs on {sorted(devices)}: a time budget buys each a different schedule")
    if speed_only == {True}:
        table = speed_table(results, title)
        (folder / "table.md").write_text(table)
        return table
    differences = differences_to_base(results, data)
    headers = [name for name, _ in COLUMNS] + (["mAP@50 - base (95%)", "AUROC - base (95%)"] if differences else [])
    lines = [
        f"Recipe ablation, {title}: FracAtlas test (132 X-rays, 67 boxes)",
        "",
        "| variant | lever | epochs | " + " | ".join(headers) + " |",
        "|---|---|---|" + "---|" * len(headers),
    ]
    for result in results:
        cells = [f"{get(result):.3f}" if get(result) is not None else "-" for _, get in COLUMNS]
        if differences:
            paired = differences.get(result["variant"], {})
            cells += [difference_cell(paired[name]) if name in paired else "-" for name in METRICS]
        lines.append(f"| {result['variant']} | {result['description']} | {result['epochs_run']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    if differences:
        lines += ["", "Differences: paired bootstrap over the test X-rays (1,000 resamples), each variant's "
                  "last epoch against base's."]  # fmt: skip
    lines += intervals(results, data)
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    plot(results, folder / "recipe_ablation.png", title)
    return table


def speed_table(results: list[dict[str, Any]], title: str) -> str:
    """What each lever costs, and how many epochs of the train split a 60-minute budget holds
    (training alone: each epoch's validation comes on top)."""
    base = next((r for r in results if r["variant"] == "base"), results[0])
    lines = [
        f"Recipe ablation, cost of each lever, {title}, one variant at a time: training from ImageNet weights at "
        f"batch {base['train_config']['batch_size']}, inference one X-ray at a time on FracAtlas test",
        "",
        "| variant | lever | train img/s | vs base | infer img/s | vs base | epochs in 60 min | weights MB (fp16) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['description']} | {r['train_images_per_second']:.2f} | "
            f"{r['train_images_per_second'] / base['train_images_per_second']:.2f}x | "
            f"{r['inference_images_per_second']:.2f} | "
            f"{r['inference_images_per_second'] / base['inference_images_per_second']:.2f}x | "
            f"{3600 * r['train_images_per_second'] / r['train_images']:.1f} | {r['half_precision_mb']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [r["variant"] for r in results]
    positions = range(len(results))
    bars.bar([p - 0.2 for p in positions], [r["test"]["mAP50"] or 0 for r in results], 0.4, label="test mAP@50")
    bars.bar([p + 0.2 for p in positions], [r["test_flip_tta"]["mAP50"] or 0 for r in results], 0.4,
             label="with flip TTA")
    base = next((r["test"]["mAP50"] for r in results if r["variant"] == "base"), None)
    if base is not None:
        bars.axhline(base, color="grey", linestyle=":", label="base")
    bars.set_xticks(list(positions), names, rotation=30)
    bars.set_ylabel("mAP@50")
    bars.legend()
    for result in results:
        epochs = result["validation_per_epoch"]
        # Markers, because a lever that fits one epoch in the budget is a single point.
        curves.plot([e["epoch"] for e in epochs], [e.get("mAP50") or 0 for e in epochs], marker="o",
                    label=result["variant"])
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation mAP@50")
    curves.legend(fontsize=7)
    figure.suptitle(f"Recipe ablation ({title})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_ablation"))
    parser.add_argument("--variant", choices=list(variants(1, 1, 0.0, 0)))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, help="Safety stop for training, minutes (reported).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speed", type=float, metavar="SECONDS",
                        help="Measure the variant's training and inference speed for this long instead of training it.")
    parser.add_argument("--report", type=Path, help="Gather the JSON of a finished run folder instead.")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    if args.report:
        print(report(args.report, args.title, args.data))
        return
    if not args.variant:
        parser.error("--variant or --report is required")
    recipe = variants(args.epochs, args.batch_size, args.lr, args.workers)[args.variant]
    if args.time_budget:
        recipe = replace(recipe, train={**recipe.train, "time_budget_minutes": args.time_budget})
    device = choose_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        result = measure_speed(recipe, args.data, device, args.seed, args.speed)
        (args.out / f"{args.variant}.json").write_text(json.dumps(result, indent=2))
        print(args.variant, f"train {result['train_images_per_second']:.2f} img/s,",
              f"inference {result['inference_images_per_second']:.2f} img/s", flush=True)  # fmt: skip
        return
    result = run_variant(recipe, args.data, args.out, device, args.seed)
    (args.out / f"{args.variant}.json").write_text(json.dumps(result, indent=2))
    print(args.variant, json.dumps(result["test"]), json.dumps(result["test_flip_tta"]), flush=True)


if __name__ == "__main__":
    main()
