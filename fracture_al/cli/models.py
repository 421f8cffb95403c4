"""Training, evaluating and running models, and the model store: ``train``, ``evaluate``,
``predict``, ``models list|show|promote``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fracture_al.cli.base import CliError, console, errors, fmt, main, model_store, resolve_version, settings_of
from fracture_al.settings import SAMPLE_DIR

# Training and evaluation -------------------------------------------------------------------------
data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=SAMPLE_DIR,
    show_default="the bundled sample X-rays",
    help="Folder with train.json, val.json, test.json, images/.",
)
TASKS = ("detection", "segmentation", "classification")
task_option = click.option("--task", type=click.Choice(TASKS), default="detection", show_default=True,
                           help="Boxes, fracture masks, or fracture / no fracture per X-ray; picks the "
                                "task's current model when --model is not given.")  # fmt: skip


@main.command()
@data_option
@task_option
@click.option("--arch", default=None, help="Architecture (detection: mobilenet_v2_fpn; segmentation: unet, "
              "attention_unet, r2_unet, swin_unetr; classification: mobilenet_v2, vit).")  # fmt: skip
@click.option("--image-size", type=int, default=None, help="Segmentation / classification input side (px).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--min-size", type=int, default=None, help="Shorter image side after resizing.")
@click.option("--max-size", type=int, default=None, help="Cap on the longer side after resizing.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many minutes.")
@click.option("--workers", type=int, default=None, help="Data-loading processes.")
@click.option("--weights", default=None, help="Pretrained checkpoint file, or 'none' for random init.")
@click.option(
    "--recipe",
    "recipe_name",
    default="baseline",
    show_default=True,
    help="Training recipe (detection/recipes.py: baseline, cpu, gpu); flags override it.",
)
@click.option(
    "--warm-start",
    "warm_start",
    default=None,
    help="Fine-tune this model version, 'current', or 'shipped' (the packaged detector).",
)
@click.option("--run-name", default=None, help="Name of the run folder (reuse it with --resume).")
@click.option("--resume", is_flag=True, help="Continue the run's last checkpoint.")
@click.option("--no-promote", is_flag=True, help="Publish without making it the current version.")
@click.pass_context
def train(
    context: click.Context,
    data_dir: Path,
    task: str,
    arch,
    image_size,
    epochs,
    batch_size,
    lr,
    min_size,
    max_size,
    time_budget,
    workers,
    weights,
    recipe_name,
    warm_start,
    run_name,
    resume,
    no_promote,
) -> None:
    """Train a detector (or, with --task, a segmenter or classifier) and publish it as a new model version."""
    from dataclasses import replace

    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.model_files import saved_model_config, version_model_config
    from fracture_al.detection.recipes import recipe
    from fracture_al.detection.shipped_model import verified_weights, verify_version
    from fracture_al.detection.store import ModelStoreError
    from fracture_al.detection.training import Initialisation, TrainConfig, fit
    from fracture_al.detection.versioning import data_sources, publish_outcome
    from fracture_al.detection.weights import WeightsError

    settings = settings_of(context)
    store = model_store(settings)
    if task != "detection":
        if warm_start or weights:
            raise CliError("--warm-start and --weights are for detectors; a segmenter or classifier starts from "
                           "ImageNet where its architecture can")  # fmt: skip
        training = _given(epochs=epochs, batch_size=batch_size, lr=lr, time_budget_minutes=time_budget, workers=workers)
        _train_mask_model(settings, data_dir, task, arch, run_name, resume, no_promote, _given(image_size=image_size),
                          training)  # fmt: skip
        return
    splits = _load_splits(data_dir)
    try:
        model_config, train_config = recipe(recipe_name).configs(
            splits["train"].coco, train=TrainConfig(seed=settings.seed)
        )
    except ValueError as error:
        raise CliError(str(error)) from error
    model_config = replace(model_config, **_given(arch=arch, min_size=min_size, max_size=max_size))
    train_config = replace(train_config, **_given(epochs=epochs, batch_size=batch_size, lr=lr,
                                                  time_budget_minutes=time_budget, workers=workers))  # fmt: skip
    init = Initialisation(
        weights_file=Path(weights) if weights else None,
        weights_dirs=settings.weights_dirs,
        allow_download=settings.allow_weight_download,
    )
    try:
        if warm_start == "shipped":
            init.model_file = verified_weights()
            model_config = saved_model_config(init.model_file)
        elif warm_start:
            version = store.resolve(None if warm_start == "current" else warm_start)
            verify_version(version)
            init.model_file, model_config = version.weights_path, version_model_config(version)
    except ModelStoreError as error:
        raise CliError(str(error)) from error
    if init.model_file is not None:  # fine-tuning: the data must speak the model's classes
        splits = _load_splits(data_dir, model_config.class_names)
    run_dir = settings.runs_dir / (run_name or _new_run_name())
    console.print(f"training [bold]{model_config.arch}[/] on {data_dir} -> run folder {run_dir}")
    try:
        outcome = fit(
            model_config,
            train_config,
            splits["train"],
            splits["val"],
            run_dir,
            device=choose_device(settings.device),
            init=init,
            resume=resume,
        )
    except (WeightsError, RuntimeError) as error:
        raise CliError(str(error)) from error
    version = publish_outcome(
        store, outcome, test_split=splits["test"], data_sources=data_sources(**splits), make_current=not no_promote
    )
    _print_version(version)


def _train_mask_model(
    settings, data_dir: Path, task: str, arch: str | None, run_name: str | None, resume: bool, no_promote: bool,
    model_options: dict[str, Any], train_options: dict[str, Any],
) -> None:
    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.mask_models import MaskModelConfig, architectures
    from fracture_al.detection.mask_training import MaskTrainConfig, fit_masks
    from fracture_al.detection.versioning import data_sources, publish_mask_outcome
    from fracture_al.detection.weights import WeightsError

    try:
        model_config = MaskModelConfig(task, arch or architectures(task)[0], **model_options)
    except ValueError as error:
        raise CliError(str(error)) from error
    train_config = MaskTrainConfig(seed=settings.seed, **train_options)
    splits, device = _load_splits(data_dir), choose_device(settings.device)
    run_dir = settings.runs_dir / (run_name or _new_run_name())
    console.print(f"training [bold]{model_config.arch}[/] ({task}) on {data_dir} -> run folder {run_dir}")
    try:
        outcome = fit_masks(model_config, train_config, splits["train"], splits["val"], run_dir, device=device,
                            weights_dirs=tuple(settings.weights_dirs), resume=resume,
                            on_epoch=lambda summary: console.print(_epoch_line(summary)))  # fmt: skip
    except WeightsError as error:
        raise CliError(str(error)) from error
    version = publish_mask_outcome(
        model_store(settings), outcome, test_split=splits["test"], data_sources=data_sources(**splits),
        device=device, make_current=not no_promote,
    )  # fmt: skip
    _print_version(version)


def _epoch_line(summary: dict[str, Any]) -> str:
    return f"epoch {summary['epoch']}: " + ", ".join(f"{k} {fmt(v)}" for k, v in summary.items() if k != "epoch")


@main.command()
@click.option("--model", "model_name", default=None, help="Model version (default: the task's current one).")
@task_option
@data_option
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--image-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Fracture probability (the version's, calibrated as served) that counts as 'fracture present'.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluate(
    context: click.Context, model_name, task: str, data_dir: Path, split: str, image_threshold: float, as_json: bool
) -> None:
    """A model version's metrics on a data split: COCO mAP and image-level metrics for a detector;
    Dice, Jaccard, pixel accuracy and image-level metrics with 95% intervals for a segmenter or
    classifier."""
    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.model_files import load_model
    from fracture_al.detection.shipped_model import verify_version
    from fracture_al.detection.training import TrainConfig, evaluate_split

    settings = settings_of(context)
    version = resolve_version(settings, model_name, task)
    chosen = _load_splits(data_dir)[split]
    if chosen is None:
        raise CliError(f"{data_dir} has no {split}.json")
    device = choose_device(settings.device)
    verify_version(version)
    model, config = load_model(version.weights_path, device)
    if version.task == "detection":
        # The version's own calibration, so the call is the one served and nothing is fitted on this split.
        metrics, _ = evaluate_split(model, chosen, TrainConfig(image_threshold=image_threshold), device,
                                    flip_tta=config.flip_tta, calibration=version.probability_calibration)  # fmt: skip
    else:
        from fracture_al.detection.mask_training import MaskTrainConfig, evaluate_masks

        intervals, _ = evaluate_masks(model, config, chosen, MaskTrainConfig(threshold=image_threshold), device,
                                      resamples=1000)  # fmt: skip
        metrics = {name: value["value"] for name, value in intervals.items()}
        metrics.update({f"{name} 95%": f"{fmt(v['low'])} to {fmt(v['high'])}" for name, v in intervals.items()})
    if as_json:
        click.echo(json.dumps({"model_version": version.name, "split": split, **metrics}, indent=2))
    else:
        console.print(_metrics_table(f"{version.name} on {data_dir.name}/{split}", metrics))


@main.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--image", "more_images", multiple=True, type=click.Path(path_type=Path),
              help="An X-ray to run on (repeatable; the same as naming it as an argument).")  # fmt: skip
@click.option("--model", "model_name", default=None, help="Model version (default: the task's current one).")
@task_option
@click.option("--threshold", type=float, default=None,
              help="Lowest box score shown (default: FRACTURE_AL_PREDICT_SCORE_THRESHOLD, else the version's "
                   "threshold calibrated on its validation X-rays); for masks, the pixel probability.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--overlay",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write <image>.pred.png with the boxes or the mask drawn into this folder.",
)
@click.pass_context
def predict(
    context: click.Context, images: tuple[Path, ...], more_images: tuple[Path, ...], model_name, task: str,
    threshold: float | None, as_json: bool, overlay: Path | None,
) -> None:
    """Find fractures on X-ray image files: boxes, or a mask, and the X-ray's fracture probability."""
    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.images import ImageLoadError, load_image

    settings = settings_of(context)
    paths = [*images, *more_images]
    if not paths:
        raise CliError("name at least one X-ray: fracture-al predict --image xray.jpg")
    version = resolve_version(settings, model_name, task)
    run = _box_runner if version.task == "detection" else _mask_runner
    predict_one, threshold = run(version, choose_device(settings.device), threshold, settings)
    results, failures = [], 0
    for path in paths:
        try:
            image = load_image(path)
        except ImageLoadError as error:
            failures += 1
            errors.print(f"[red]skipped[/] {error}")
            results.append({"image": str(path), "error": str(error)})
            continue
        entry = {"image": str(path), "model_version": version.name, "task": version.task, "threshold": threshold}
        results.append({**entry, **predict_one(image, overlay / f"{path.stem}.pred.png" if overlay else None)})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        console.print(_predictions_table(results, threshold))
    if failures:
        sys.exit(1)


def _box_runner(version, device, threshold: float | None, settings):
    """``(image, overlay path or None) -> result`` for a detector, and the box threshold it shows."""
    from fracture_al.detection.plots import draw_overlay
    from fracture_al.detection.predictor import Predictor
    from fracture_al.integrations.task_predictions import display_threshold

    predictor = Predictor.from_version(version, device)
    threshold = display_threshold(threshold, settings.predict_score_threshold, predictor.operating_threshold)

    def predict_one(image, overlay: Path | None) -> dict[str, Any]:
        raw = predictor.predict([image])[0]
        prediction = raw.above(threshold)
        # The X-ray's probability counts every box, shown or not: a fracture scored 0.4 is not "0.000".
        entry = {**prediction.to_dict(), "image_score": raw.image_score, "probability": raw.image_score}
        if overlay is not None:
            entry["overlay"] = str(draw_overlay(image, prediction.boxes, prediction.scores, overlay,
                                                score_threshold=threshold))  # fmt: skip
        return entry

    return predict_one, threshold


def _mask_runner(version, device, threshold: float | None, settings):
    """``(image, overlay path or None) -> result`` for a segmenter or classifier."""
    from fracture_al.detection.mask_predictor import MaskPredictor
    from fracture_al.detection.plots import plot_mask_grid

    predictor = MaskPredictor.from_version(version, device)
    threshold = threshold if threshold is not None else predictor.threshold

    def predict_one(image, overlay: Path | None) -> dict[str, Any]:
        prediction = predictor.predict([image])[0]
        mask = prediction.mask(threshold)
        entry = {"probability": prediction.probability, "fracture": prediction.probability >= threshold,
                 "mask_pixels": int(mask.sum()) if mask is not None else None, "detections": []}  # fmt: skip
        if overlay is not None:
            entry["overlay"] = str(plot_mask_grid([(image, None, prediction.probabilities, prediction.probability)],
                                                  overlay, threshold=threshold, columns=1))  # fmt: skip
        return entry

    return predict_one, threshold


# Model store ----------------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """List, inspect and promote (or roll back) model versions."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(context: click.Context, as_json: bool) -> None:
    store = model_store(settings_of(context))
    rows = [
        {"version": v.name, "task": v.task, "current": v.name == store.current_name(v.task), **_headline(v.metrics),
         "source": v.provenance.get("source", "trained"), "gate": (v.provenance.get("gate") or {}).get("reason")}
        for v in store.list()
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("version", "task", "current", "source", "test mAP@50", "test mAP@75", "test AUROC", "val mAP@50",
                  "gate", title=str(store.root))  # fmt: skip
    for row in rows:
        table.add_row(row["version"], row["task"], "*" if row["current"] else "", row["source"],
                      *(fmt(row[k]) for k in _HEADLINE), row["gate"] or "")  # fmt: skip
    console.print(table)


@models.command("show")
@click.argument("version", required=False)
@click.pass_context
def models_show(context: click.Context, version: str | None) -> None:
    """Config, metrics and plot files of a version (default: current)."""
    _print_version(resolve_version(settings_of(context), version))


@models.command("promote")
@click.argument("version")
@click.pass_context
def models_promote(context: click.Context, version: str) -> None:
    """Serve VERSION from now on (also how to roll back)."""
    from fracture_al.detection.store import ModelStoreError

    try:
        promoted = model_store(settings_of(context)).promote(version)
    except ModelStoreError as error:
        raise CliError(str(error)) from error
    console.print(f"current model is now [bold]{promoted.name}[/]")


_HEADLINE = ("test_mAP50", "test_mAP75", "test_auroc", "val_mAP50")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    test, validation = metrics.get("test", {}), metrics.get("validation", {})
    return {
        "test_mAP50": test.get("mAP50"),
        "test_mAP75": test.get("mAP75"),
        "test_auroc": test.get("auroc"),
        "val_mAP50": validation.get("mAP50"),
    }


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _new_run_name() -> str:
    import datetime

    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _load_splits(data_dir: Path, class_names: list[str] | None = None):
    from fracture_al.detection.training import load_splits

    try:
        return load_splits(data_dir, class_names=class_names)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from error


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(key, fmt(value))
    return table


def _print_version(version) -> None:
    metrics, provenance = version.metrics, version.provenance
    console.print(f"model version [bold]{version.name}[/] at {version.path}")
    if provenance:
        _print_provenance(provenance)
    for split in ("validation", "test"):
        if metrics.get(split):
            shown = {k: v for k, v in metrics[split].items() if k in _METRIC_KEYS}
            console.print(_metrics_table(split, shown))
    if version.task == "detection":
        console.print(_served_with(version))
    console.print(f"training: {metrics.get('train_images_per_second', 0):.2f} images/s")
    for plot in version.plots:
        console.print(f"plot: {plot}")


def _served_with(version) -> str:
    """The display threshold and probability calibration the version was fitted on its validation X-rays."""
    from fracture_al.detection.image_score import MIN_CALIBRATION_XRAYS, UNCALIBRATED

    threshold = version.operating_threshold
    calibration = version.probability_calibration
    shown = f"boxes shown from score {fmt(threshold)}" if threshold is not None else "no display threshold of its own"
    if calibration == UNCALIBRATED:
        return (f"served with: {shown}; fracture probability the noisy-OR of the box scores, uncalibrated "
                f"(it needs {MIN_CALIBRATION_XRAYS} validation X-rays with fractured and healthy ones)")  # fmt: skip
    return (f"served with: {shown}; fracture probability sigmoid({calibration.slope:.3f} x logit(noisy-OR) "
            f"{calibration.intercept:+.3f}), calibrated on its validation X-rays")  # fmt: skip


def _print_provenance(provenance: dict[str, Any]) -> None:
    console.print(f"source: {provenance.get('source')}" + "".join(
        f", {key} {provenance[key]}" for key in ("label_studio_project", "warm_start", "sha256") if provenance.get(key)
    ))  # fmt: skip
    for key, title in (("trained_on", "trained on"), ("validated_on", "validated on")):
        records = provenance.get(key) or []
        if records:
            table = Table("image id", "annotation id", "boxes", "image sha256",
                          title=f"{title}: {len(records)} X-rays")  # fmt: skip
            for record in records:
                table.add_row(str(record.get("image_id")), str(record.get("annotation_id", "")),
                              str(record.get("boxes", "")), record.get("sha256", ""))  # fmt: skip
            console.print(table)
    gate = provenance.get("gate")
    if gate:
        console.print(f"gate: {'passed' if gate['passed'] else 'kept, not served'}: {gate['reason']}")
        for name in ("delta_map50", "delta_sensitivity"):
            if gate.get(name):
                d = gate[name]
                console.print(f"  {name}: {fmt(d['value'])} (95% interval {fmt(d['low'])} to {fmt(d['high'])}, "
                              f"better in {fmt(d['probability_better'])} of resamples)")  # fmt: skip
    for key, value in provenance.items():
        if key not in ("source", "label_studio_project", "warm_start", "sha256", "trained_on", "validated_on", "gate",
                       "validation_assigned"):  # fmt: skip
            console.print(f"{key}: {value}")


_METRIC_KEYS = ("mAP", "mAP50", "mAP75", "AR100", "dice_fractured", "jaccard_fractured", "dice_all", "jaccard_all",
                "pixel_accuracy", "accuracy", "sensitivity", "specificity", "auroc")  # fmt: skip


def _predictions_table(results: list[dict[str, Any]], threshold: float) -> Table:
    table = Table("image", "label", "score", "box (x1, y1, x2, y2) px / mask",
                  title=f"fractures found (threshold {threshold:.2f})")  # fmt: skip
    for result in results:
        if "error" in result:
            table.add_row(result["image"], "[red]error[/]", "", result["error"])
        elif result.get("task", "detection") != "detection":
            label = "fracture" if result["fracture"] else "no fracture"
            pixels = result["mask_pixels"]
            table.add_row(result["image"], label, f"{result['probability']:.3f}",
                          f"{pixels} pixels" if pixels is not None else "")  # fmt: skip
        elif not result["detections"]:
            table.add_row(result["image"], "none", f"{result['image_score']:.3f}", "")
        for detection in result.get("detections", []):
            table.add_row(
                result["image"],
                detection["label"],
                f"{detection['score']:.3f}",
                ", ".join(f"{v:.0f}" for v in detection["box_xyxy"]),
            )
    return table
