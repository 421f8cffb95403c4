"""Does the review queue beat random labelling where real teams are: adapting a pretrained fracture
model to their own X-rays?

The setting is the body-part domain shift of benchmarks/domain_shift.py: the source model is
trained on FracAtlas train X-rays that show no hand (benchmarks/few_label_finetune.py --stage
source; trained once, read from ``--source``), the unlabelled pool is the hand X-rays of train
(563), the test set the hand X-rays of val + test (117). Round 0 is the source model itself, shared
by every strategy and seed. Each round, a strategy ranks the unlabelled pool with the product's own
code (``measure_signals`` + ``rank_tasks``, as the scoring jobs do), the first ``--batch`` X-rays
are "labelled" (their ground truth revealed), and the model is retrained on all labels so far with
the product's retrain recipe (warm start from the served model, i.e. the previous round's, the
recipe ``detection.recipes.retrain_train_config`` picks from the default ``Settings``: few-label
fine-tuning up to ``retrain_few_label_up_to`` labels), then tested. The results under
benchmarks/reported/active_learning_gpu/ were made before the worker had the few-label recipe,
with plain fine-tuning (``retrain_epochs`` at the full rate) in every round. Recorded per round: target mAP@50 (with
the predictions, for paired intervals), and the share of the model's image-level mistakes on the
candidates (a fractured X-ray scored under 0.5, a healthy one at or over) that the queue puts in
its top 10% (random: 10%).

Every round is saved as it ends; a rerun resumes where the last one stopped. ``--report`` makes the
table (mean over seeds with t 95% intervals, paired difference to random per seed, labels needed
to reach 95% of the full-pool model's mAP@50) and the learning-curve plot.

On the 2-core CPU (``--candidates`` scores a fresh random subset of the pool each round, as Yoo and
Kweon, "Learning Loss for Active Learning", CVPR 2019, do; round 0's scores are shared by a seed's strategies):
    python -m benchmarks.active_learning --candidates 120 --batch 20 --rounds 6 --seeds 0 1 2
On a GPU, the same setting with one process per strategy and seed side by side (what
benchmarks/reported/active_learning_gpu/ holds; benchmarks/gpu/launch.sh runs it, after the source
model ``few_label_finetune --stage source --recipe cpu --epochs 10``):
    AL="python -m benchmarks.active_learning --candidates 120 --batch 20 --rounds 6"
    $AL --rounds 0 --strategies random --seeds 0 1 2 --full-pool skip    # round 0's shared scores
    for s in 0 1 2; do for a in random entropy image_entropy tta entropy_k_center cald hard_negative; do
      $AL --strategies $a --seeds $s --full-pool skip & done; done; $AL --full-pool only --seeds 0; wait
    $AL --report
The full setting (all of the pool scored every round, 8 rounds of 25, 5 seeds) is the same with
``--candidates 0 --batch 25 --rounds 8 --seeds 0 1 2 3 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats

from benchmarks.domain_shift import domain_shift, subset, write_dataset
from benchmarks.predictions import compact, expand
from fracture_al.detection.data import CocoImage
from fracture_al.detection.devices import choose_device
from fracture_al.detection.evaluation import average_precision, match_detections
from fracture_al.detection.images import load_image
from fracture_al.detection.model_files import load_model, save_model
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.training import DataSplit, Initialisation, TrainConfig, evaluate_split, fit, load_splits
from fracture_al.integrations.task_predictions import measure_signals
from fracture_al.sampling.choices import Strategy, Uncertainty
from fracture_al.sampling.diversity import random_order
from fracture_al.sampling.queue import TaskSignals, rank_tasks
from fracture_al.settings import Settings
from fracture_al.worker.jobs import retrain_recipe

# Each acquisition the review queue can be set to (uncertainty, batch strategy); None = random.
ACQUISITIONS: dict[str, tuple[Uncertainty, Strategy] | None] = {
    "random": None,
    "entropy": ("entropy", "uncertainty"),
    "least_confidence": ("least_confidence", "uncertainty"),
    "margin": ("margin", "uncertainty"),
    "image_entropy": ("image_entropy", "uncertainty"),
    "image_entropy_tta": ("image_entropy_tta", "uncertainty"),
    "tta": ("tta", "uncertainty"),
    "cald": ("cald", "uncertainty"),
    "hard_negative": ("hard_negative", "uncertainty"),
    "entropy_k_center": ("entropy", "k_center"),
}
IMAGE_THRESHOLD = 0.5


@dataclass
class Setting:
    """The shift's data as the benchmark uses it: pool records by index, the target split."""

    pool: list[CocoImage]
    pool_coco: dict[str, Any]
    image_dir: Path
    target: DataSplit

    def labelled_split(self, indices: list[int], folder: Path) -> DataSplit:
        ids = {self.pool[i].image_id for i in indices}
        chosen = subset(self.pool_coco, [image for image in self.pool_coco["images"] if image["id"] in ids])
        path = folder / "labelled.json"
        path.write_text(json.dumps(chosen))
        return DataSplit.load(path, self.image_dir)


def load_setting(data: Path, work: Path) -> Setting:
    parts = domain_shift(data)
    folder = write_dataset(work / "data", data / "images", parts["pool"], None, parts["target"])
    splits = load_splits(folder)
    return Setting(splits["train"].coco.images, parts["pool"], folder / "images", splits["test"])


def retrain_config(seed: int, labelled_images: int, *, warm_start: bool = True) -> TrainConfig:
    """The worker's retrain settings (worker.jobs.retrain_recipe, the product's defaults) for
    ``labelled_images`` X-rays; evaluation reads its batch size and threshold from the plain ones."""
    _, config = retrain_recipe(Settings(), labelled_images, warm_start=warm_start)
    return replace(config, seed=seed)


def score(model_file: Path, setting: Setting, indices: list[int], device: torch.device) -> dict[str, Any]:
    """What the scoring jobs measure on these pool X-rays (with TTA), and the model's image-level
    mistakes among them."""
    model, config = load_model(model_file, device)
    predictor = Predictor(model, config, device, model_file.parent.name)
    images = [load_image(setting.image_dir / setting.pool[i].file_name) for i in indices]
    predictions = predictor.predict(images)
    signals = measure_signals(indices, predictor, images, predictions, with_tta=True)
    mistakes = [i for i, p in zip(indices, predictions, strict=True)
                if (p.image_score >= IMAGE_THRESHOLD) != bool(setting.pool[i].boxes)]  # fmt: skip
    return {"signals": [s.to_dict() for s in signals], "mistakes": mistakes}


def queue_order(
    acquisition: str, signals: list[TaskSignals], candidates: list[int], batch: int, seed: int
) -> list[int]:
    """The candidates in the order the acquisition would have them labelled."""
    if ACQUISITIONS[acquisition] is None:
        return [candidates[i] for i in random_order(len(candidates), seed)]
    uncertainty, strategy = ACQUISITIONS[acquisition]
    wanted = set(candidates)
    mine = [s for s in signals if s.task_id in wanted]
    queue = rank_tasks(mine, uncertainty=uncertainty, strategy=strategy, batch_size=batch, seed=seed)
    return [entry.task_id for entry in queue]


def mistakes_in_top_decile(order: list[int], mistakes: list[int], candidates: list[int]) -> float | None:
    """Share of the model's image-level mistakes on the candidates that the first tenth of the queue
    holds (random: 0.1)."""
    wrong = set(mistakes) & set(candidates)
    if not order or not wrong:
        return None
    top = set(order[: max(1, len(order) // 10)])
    return len(wrong & top) / len(wrong)


def test_model(model_file: Path, setting: Setting, seed: int, device: torch.device) -> dict[str, Any]:
    model, config = load_model(model_file, device)
    plain = retrain_config(seed, 0, warm_start=False)
    metrics, predictions = evaluate_split(model, setting.target, plain, device, flip_tta=config.flip_tta,
                                          description="target")  # fmt: skip
    return {"target": metrics, "predictions": compact(predictions)}


def cached(path: Path, make) -> dict[str, Any]:
    """``make()``'s JSON result, computed once: a rerun reads it back."""
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    result = make()
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # processes side by side may make the same result
    temporary.write_text(json.dumps(result))
    temporary.replace(path)  # a kill mid-write leaves no half result to resume from
    return result


def candidates_for(unlabelled: list[int], size: int, seed: int, round_number: int) -> list[int]:
    if not size or size >= len(unlabelled):
        return unlabelled
    rng = np.random.default_rng(seed * 1000 + round_number)
    return sorted(int(i) for i in rng.choice(unlabelled, size=size, replace=False))


def run(acquisition: str, seed: int, setting: Setting, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One strategy from the source model, round by round; finished rounds are read back."""
    source, everything = args.source, list(range(len(setting.pool)))
    # Round 0 is the source model for every strategy: its scores of a seed's first candidates are shared.
    first = candidates_for(everything, args.candidates, seed, 0)
    shared = cached(args.out / "source" / f"pool_scores-s{seed}.json", lambda: score(source, setting, first, device))
    tested = cached(args.out / "source" / "target.json", lambda: test_model(source, setting, seed, device))
    labelled: list[int] = []
    model_file, scores = source, shared
    rows = []
    for round_number in range(args.rounds + 1):
        unlabelled = sorted(set(range(len(setting.pool))) - set(labelled))
        candidates = candidates_for(unlabelled, args.candidates, seed, round_number)
        signals = [TaskSignals.from_dict(s) for s in scores["signals"]] if scores else []
        order = queue_order(acquisition, signals, candidates, args.batch, seed * 100 + round_number)
        rows.append({"strategy": acquisition, "seed": seed, "round": round_number, "labelled": len(labelled),
                     "test_mAP50": tested["target"]["mAP50"], "test_auroc": tested["target"]["auroc"],
                     "mistakes_in_top_10pct": mistakes_in_top_decile(order, scores["mistakes"], candidates)
                     if scores else None,
                     "predictions": tested["predictions"]})  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "predictions"}), flush=True)
        if round_number == args.rounds or not order:
            break
        labelled = labelled + order[: args.batch]
        folder = args.out / f"{acquisition}-s{seed}" / f"r{round_number + 1}"
        previous = model_file
        model_file = folder / "model.pt"
        if not model_file.exists():
            train(previous, labelled, setting, folder, seed, device)
        tested = cached(folder / "target.json", lambda file=model_file: test_model(file, setting, seed, device))
        last = round_number + 1 == args.rounds
        scores = None
        if not last and ACQUISITIONS[acquisition] is not None:
            remaining = sorted(set(range(len(setting.pool))) - set(labelled))
            upcoming = candidates_for(remaining, args.candidates, seed, round_number + 1)
            scores = cached(folder / "pool_scores.json",
                            lambda file=model_file, c=upcoming: score(file, setting, c, device))  # fmt: skip
    return rows


def train(previous: Path, labelled: list[int], setting: Setting, folder: Path, seed: int, device: torch.device) -> None:
    """The product's retrain: warm start from the served (previous round's) model, resumable."""
    folder.mkdir(parents=True, exist_ok=True)
    _, model_config = load_model(previous)
    outcome = fit(model_config, retrain_config(seed, len(labelled)), setting.labelled_split(labelled, folder), None,
                  folder / "run", device=device, init=Initialisation(model_file=previous), resume=True)  # fmt: skip
    temporary = folder / "model.pt.tmp"
    save_model(outcome.model, model_config, temporary)
    temporary.replace(folder / "model.pt")
    shutil.rmtree(folder / "run")  # the checkpoint (optimizer state included) is not needed once the model is saved
    (folder / "labelled.txt").write_text("\n".join(str(setting.pool[i].image_id) for i in labelled))


def full_pool_reference(setting: Setting, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every pool X-ray labelled, retrained once from the source model with the same recipe."""
    folder = args.out / "full_pool"
    if not (folder / "model.pt").exists():
        train(args.source, list(range(len(setting.pool))), setting, folder, 0, device)
    return cached(folder / "target.json", lambda: test_model(folder / "model.pt", setting, 0, device))


# Report ------------------------------------------------------------------------------------------
def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def load_rows(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("rows-*.jsonl")) for line in path.read_text().splitlines()]


def labels_to_reach(rows: list[dict], target: float) -> int | None:
    for row in sorted(rows, key=lambda r: r["labelled"]):
        if row["test_mAP50"] is not None and row["test_mAP50"] >= target:
            return row["labelled"]
    return None


def replay_acquisitions(setting: Setting, args: argparse.Namespace, acquisition: str, seed: int,
                        rounds: int) -> list[dict[str, float | None]]:  # fmt: skip
    """Each round's queue replayed from the saved pool scores (given them, its order is
    deterministic): the fractured share of everything labelled so far (whether a strategy wins by
    finding the pool's rare fractures), and of the queue's top 10%, the share that are the model's
    image-level mistakes beside the candidates' own share (a queue that finds mistakes has more at
    the top than in the candidates), and the most of all mistakes a top 10% can hold (when the
    model is wrong on more than a tenth of the candidates, it cannot hold them all)."""
    labelled: list[int] = []
    scores = json.loads((args.out / "source" / f"pool_scores-s{seed}.json").read_text())
    replayed = []
    for round_number in range(rounds):
        unlabelled = sorted(set(range(len(setting.pool))) - set(labelled))
        candidates = candidates_for(unlabelled, args.candidates, seed, round_number)
        signals = [TaskSignals.from_dict(s) for s in scores["signals"]] if scores else []
        order = queue_order(acquisition, signals, candidates, args.batch, seed * 100 + round_number)
        labelled += order[: args.batch]
        row: dict[str, float | None] = {"fractured_share_of_labelled":
                                        sum(bool(setting.pool[i].boxes) for i in labelled) / len(labelled)}  # fmt: skip
        if scores:
            wrong, top = set(scores["mistakes"]) & set(candidates), order[: max(1, len(order) // 10)]
            ceiling = min(len(top), len(wrong)) / len(wrong) if wrong else None
            row.update({"mistake_share_of_top_10pct": len(wrong & set(top)) / len(top),
                        "mistake_share_of_candidates": len(wrong) / len(candidates),
                        "most_mistakes_a_top_10pct_holds": ceiling})  # fmt: skip
        replayed.append(row)
        following = args.out / f"{acquisition}-s{seed}" / f"r{round_number + 1}" / "pool_scores.json"
        scores = json.loads(following.read_text()) if following.exists() else None
    return replayed


def mean_over_seeds(replays: list[list[dict[str, float | None]]], key: str) -> float | None:
    values = [row[key] for replay in replays for row in replay if row.get(key) is not None]
    return statistics.fmean(values) if values else None


def report(out: Path, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
    target_coco = setting.target.coco
    rows = load_rows(out)
    if not rows:
        raise SystemExit(f"no rounds in {out}: run the benchmark first")
    full = json.loads((out / "full_pool" / "target.json").read_text()) if (out / "full_pool" / "target.json").exists() \
        else None  # fmt: skip
    reference = full["target"]["mAP50"] if full else None
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    table = []
    for strategy in strategies:
        for labelled in sorted({r["labelled"] for r in rows if r["strategy"] == strategy}):
            mine = {r["seed"]: r for r in rows if r["strategy"] == strategy and r["labelled"] == labelled}
            mean, low, high = t_interval([r["test_mAP50"] for r in mine.values()])
            random_rows = {r["seed"]: r for r in rows if r["strategy"] == "random" and r["labelled"] == labelled}
            versus = {seed: random_rows[seed] for seed in mine if seed in random_rows}
            difference = (t_interval([mine[s]["test_mAP50"] - versus[s]["test_mAP50"] for s in versus])
                          if versus and strategy != "random" else None)  # fmt: skip
            deciles = [r["mistakes_in_top_10pct"] for r in mine.values() if r["mistakes_in_top_10pct"] is not None]
            table.append({"strategy": strategy, "labelled": labelled, "seeds": sorted(mine), "mAP50": mean,
                          "mAP50_low": low, "mAP50_high": high, "vs_random": difference,
                          "mistakes_in_top_10pct": statistics.fmean(deciles) if deciles else None})  # fmt: skip
    to_reach = {
        strategy: [labels_to_reach([r for r in rows if r["strategy"] == strategy and r["seed"] == s], 0.95 * reference)
                   for s in sorted({r["seed"] for r in rows if r["strategy"] == strategy})]
        for strategy in strategies
    } if reference else {}  # fmt: skip
    pooled = paired_over_images(rows, target_coco)
    rounds = max(r["round"] for r in rows)
    replays = {strategy: [replay_acquisitions(setting, args, strategy, seed, rounds)
                          for seed in sorted({r["seed"] for r in rows if r["strategy"] == strategy})]
               for strategy in strategies} if rounds else {}  # fmt: skip
    fractured = {strategy: statistics.fmean(replay[-1]["fractured_share_of_labelled"] for replay in replayed)
                 for strategy, replayed in replays.items()}  # fmt: skip
    top_of_queue = {strategy: {key: mean_over_seeds(replayed, key) for key in
                               ("mistake_share_of_top_10pct", "mistake_share_of_candidates",
                                "most_mistakes_a_top_10pct_holds")}
                    for strategy, replayed in replays.items()}  # fmt: skip
    summary = {"full_pool_mAP50": reference, "table": table, "labels_to_95pct_of_full_pool": to_reach,
               "paired_over_images_vs_random": pooled,
               "pool_fractured_share": sum(bool(image.boxes) for image in setting.pool) / len(setting.pool),
               "fractured_share_of_labelled_at_last_round": fractured,
               "top_of_queue_over_rounds": top_of_queue}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(table, reference, out / "learning_curves.png")
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    def number(value: float | None, signed: bool = False) -> str:
        return "-" if value is None else f"{value:+.3f}" if signed else f"{value:.3f}"

    lines = ["| strategy | labelled | seeds | target mAP@50 (t 95%) | minus random (t 95% over seeds) | "
             "mistakes in top 10% |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in summary["table"]:
        versus = row["vs_random"]
        lines.append(
            f"| {row['strategy']} | {row['labelled']} | {len(row['seeds'])} | {number(row['mAP50'])} "
            f"({number(row['mAP50_low'])} to {number(row['mAP50_high'])}) | "
            + (f"{number(versus[0], True)} ({number(versus[1], True)} to {number(versus[2], True)})" if versus else "-")
            + f" | {number(row['mistakes_in_top_10pct'])} |"
        )
    lines.append(f"\nfull-pool mAP@50: {number(summary['full_pool_mAP50'])}; labels to reach 95% of it per seed: "
                 f"{summary['labels_to_95pct_of_full_pool']}")  # fmt: skip
    shares = ", ".join(f"{name} {share:.2f}"
                       for name, share in summary["fractured_share_of_labelled_at_last_round"].items())  # fmt: skip
    lines.append(f"\nfractured share of the labelled X-rays at the last round (pool: "
                 f"{summary['pool_fractured_share']:.2f}): {shares}")  # fmt: skip
    lines.append("\n| strategy | mistakes among the top 10% | mistakes among the candidates | "
                 "most of the mistakes a top 10% can hold |\n|---|---|---|---|")  # fmt: skip
    for name, shares in summary["top_of_queue_over_rounds"].items():
        lines.append(f"| {name} | " + " | ".join(number(shares[key]) for key in (
            "mistake_share_of_top_10pct", "mistake_share_of_candidates", "most_mistakes_a_top_10pct_holds")) + " |")
    return "\n".join(lines)


def paired_over_images(rows: list[dict], target_coco) -> list[dict[str, Any]]:
    """Per strategy, budget and seed: mAP@50 minus random's on the same target X-rays, with a paired
    bootstrap interval over the X-rays (detection.bootstrap)."""
    from fracture_al.detection.bootstrap import paired_difference

    found = []
    for row in rows:
        if row["strategy"] == "random" or not row["labelled"]:
            continue
        base = next((r for r in rows if r["strategy"] == "random" and r["seed"] == row["seed"]
                     and r["labelled"] == row["labelled"]), None)  # fmt: skip
        if base is None:
            continue
        d = paired_difference(match_detections(target_coco, expand(base["predictions"])),
                              match_detections(target_coco, expand(row["predictions"])), average_precision)  # fmt: skip
        found.append({"strategy": row["strategy"], "seed": row["seed"], "labelled": row["labelled"], **d.to_dict()})
    return found


def plot(table: list[dict], reference: float | None, path: Path) -> None:
    figure, (learning, mistakes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in table):
        mine = [r for r in table if r["strategy"] == strategy]
        sizes = [r["labelled"] for r in mine]
        learning.plot(sizes, [r["mAP50"] for r in mine], marker="o", label=strategy)
        if all(r["mAP50_low"] is not None for r in mine):
            learning.fill_between(sizes, [r["mAP50_low"] for r in mine], [r["mAP50_high"] for r in mine], alpha=0.15)
        shares = [(r["labelled"], r["mistakes_in_top_10pct"]) for r in mine if r["mistakes_in_top_10pct"] is not None]
        if shares:
            mistakes.plot(*zip(*shares, strict=True), marker="o", label=strategy)
    if reference:
        learning.axhline(0.95 * reference, color="grey", linestyle="--", label="95% of full-pool mAP@50")
    learning.set_ylabel("target (hand) test mAP@50, mean and t 95% over seeds")
    mistakes.axhline(0.1, color="grey", linestyle="--", label="expected at random")
    mistakes.set_ylabel("image-level mistakes in the queue's top 10%")
    for axis in (learning, mistakes):
        axis.set_xlabel("labelled hand X-rays")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--source", type=Path, default=Path("benchmarks/results/few_label/source_model.pt"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/active_learning"))
    parser.add_argument("--batch", type=int, default=20, help="X-rays labelled per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=120, help="pool X-rays scored per round (0 = all)")
    parser.add_argument("--strategies", nargs="+", choices=ACQUISITIONS,
                        default=["random", "entropy", "image_entropy", "tta", "entropy_k_center", "cald",
                                 "hard_negative"])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--full-pool", choices=["after", "skip", "only"], default="after",
                        help="the full-pool reference model: after the strategies, not at all, or alone")  # fmt: skip
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = choose_device(args.device)
    setting = load_setting(args.data, args.out)
    if args.report:
        summary = report(args.out, setting, args)
        print(markdown_table(summary))
        return
    if not args.source.exists():
        raise SystemExit(f"no source model at {args.source}: run benchmarks.few_label_finetune --stage source first")
    for seed in args.seeds if args.full_pool != "only" else []:  # seed-major: a stopped run has every strategy
        for acquisition in args.strategies:  # at the same depth
            rows = run(acquisition, seed, setting, args, device)
            (args.out / f"rows-{acquisition}-s{seed}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    if args.full_pool != "skip":
        full_pool_reference(setting, args, device)


if __name__ == "__main__":
    main()
