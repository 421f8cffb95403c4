"""FiftyOne: ``inspect`` (build a dataset of labels, predictions and scores), ``app`` (open it)
and ``send-back`` (tagged X-rays go back to Label Studio for review)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from fracture_al.cli.base import (
    CliError,
    console,
    fmt,
    label_studio_client,
    label_studio_connection,
    main,
    model_store,
    resolve_version,
    settings_of,
)


# FiftyOne ------------------------------------------------------------------------------------------
@main.command()
@click.option("--project", "project_id", type=int, default=None, help="Label Studio project to inspect.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Or a dataset folder (COCO files and images/).")  # fmt: skip
@click.option("--model", "model_version", default=None, help="Model version (default: current).")
@click.option("--name", default=None, help="FiftyOne dataset name (default: from the source).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inspect(context: click.Context, project_id: int | None, data_dir: Path | None, model_version: str | None,
            name: str | None, as_json: bool) -> None:  # fmt: skip
    """Build or refresh a FiftyOne dataset: labels, predictions, evaluation, Brain, saved views; fracture
    masks beside the boxes where the labels outline fractures and a segmentation model is published."""
    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.mask_predictor import MaskPredictor
    from fracture_al.detection.predictor import Predictor
    from fracture_al.integrations.fiftyone_inspect import (
        build_dataset,
        configure_fiftyone,
        images_from_folder,
        inspect_images,
        label_studio_images,
    )
    from fracture_al.integrations.image_source import ImageSource
    from fracture_al.integrations.task_predictions import display_threshold
    from fracture_al.sampling.queue import MEASURED_SCORES

    settings = settings_of(context)
    if (project_id is None) == (data_dir is None):
        raise CliError("give one of --project (a Label Studio project) or --data (a dataset folder)")
    configure_fiftyone(settings.home)
    version = resolve_version(settings, model_version)
    device = choose_device(settings.device)
    predictor = Predictor.from_version(version, device)
    store = model_store(settings)
    segmentation = store.current_name("segmentation")
    segmenter = MaskPredictor.from_version(store.get(segmentation), device) if segmentation else None
    if data_dir is not None:
        name = name or f"fracture-al-{data_dir.resolve().name}"
        images = images_from_folder(data_dir)
        info = {"source": "folder", "data": str(data_dir.resolve())}
    else:
        name = name or f"fracture-al-project-{project_id}"
        source, connection = ImageSource(**settings.image_fetching), label_studio_connection(settings)
        images = label_studio_images(label_studio_client(settings), project_id, predictor.config.class_names,
                                     lambda reference: source.fetch(reference, connection),
                                     settings.home / "fiftyone-media" / f"project-{project_id}")  # fmt: skip
        info = {"source": "label_studio", "project": project_id}
    if not images:
        raise CliError("no images to inspect")
    # FiftyOne shows a box-score uncertainty; the measured ones need more passes per image or a segmenter.
    uncertainty = "entropy" if settings.queue_uncertainty in MEASURED_SCORES else settings.queue_uncertainty
    # FiftyOne and scikit-learn print progress to stdout: with --json it goes to stderr instead.
    with _stdout_to_stderr() if as_json else contextlib.nullcontext():
        samples = inspect_images(images, predictor, batch_size=settings.predict_batch_size, uncertainty=uncertainty,
                                 segmenter=segmenter)  # fmt: skip
        threshold = display_threshold(settings.predict_score_threshold, predictor.operating_threshold)
        summary = build_dataset(name, samples, score_threshold=threshold,
                                duplicate_threshold=settings.inspect_duplicate_threshold,
                                plot_dir=settings.home / "inspections" / name,
                                info={**info, "model_version": version.name})  # fmt: skip
    if as_json:
        click.echo(json.dumps({**vars(summary), "pr_curve": str(summary.pr_curve) if summary.pr_curve else None}))
        return
    table = Table("", "", title=f"FiftyOne dataset {name} ({version.name})", show_header=False)
    table.add_row("samples (labelled)", f"{summary.samples} ({summary.labelled})")
    table.add_row("mAP (FiftyOne, COCO-style)", fmt(summary.mAP))
    table.add_row("boxes: TP / FP / FN @ IoU 0.5", f"{summary.true_positives} / {summary.false_positives} / "
                  f"{summary.false_negatives}")  # fmt: skip
    if summary.segmentation:
        table.add_row(f"masks: fracture Dice / pixel accuracy ({segmentation})",
                      f"{fmt(summary.segmentation['dice'])} / {fmt(summary.segmentation['pixel_accuracy'])} "
                      f"over {summary.segmentation['images']} X-rays")  # fmt: skip
    for view, count in summary.views.items():
        table.add_row(f"saved view {view}", str(count))
    if summary.pr_curve:
        table.add_row("PR curve", str(summary.pr_curve))
    console.print(table)
    console.print(f"open it with: fracture-al app --name {name}")


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to file descriptor 1 (also by C code and cached handlers) to 2."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@main.command()
@click.option("--name", default=None, help="Dataset to open (default: the most recently built one).")
@click.option("--port", type=int, default=5151, show_default=True)
@click.pass_context
def app(context: click.Context, name: str | None, port: int) -> None:
    """Launch the FiftyOne App on loopback (remote mode: open the printed URL)."""
    from fracture_al.integrations.fiftyone_inspect import configure_fiftyone
    from fracture_al.integrations.loopback import port_is_free

    settings = settings_of(context)
    configure_fiftyone(settings.home)
    import fiftyone as fo

    if not port_is_free(port):
        raise CliError(f"port {port} is already in use: choose another with --port")
    names = fo.list_datasets()
    if name is None and names:
        datasets = [fo.load_dataset(n) for n in names]
        name = max(datasets, key=lambda d: d.last_loaded_at or d.created_at).name
    if name is not None and name not in names:
        raise CliError(f"no FiftyOne dataset {name!r}; build it with fracture-al inspect (have: {', '.join(names)})")
    session = fo.launch_app(fo.load_dataset(name) if name else None, remote=True, address="127.0.0.1", port=port)
    console.print(f"FiftyOne App: http://127.0.0.1:{port}/datasets/{name}" if name else f"http://127.0.0.1:{port}")
    console.print("saved views: likely-label-errors, model-misses, false-alarms, near-duplicates; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        session.wait(-1)


@main.command("send-back")
@click.option("--name", required=True, help="FiftyOne dataset.")
@click.option("--tag", default="relabel", show_default=True, help="Samples with this tag go back.")
@click.option("--project", "project_id", type=int, default=None,
              help="Label Studio project, for datasets built from a folder.")  # fmt: skip
@click.pass_context
def send_back(context: click.Context, name: str, tag: str, project_id: int | None) -> None:
    """Send the X-rays tagged in FiftyOne back to Label Studio for review, current labels preloaded."""
    from fracture_al.integrations.fiftyone_inspect import SendBackError, configure_fiftyone, send_tagged_back

    settings = settings_of(context)
    configure_fiftyone(settings.home)
    try:
        project_id, task_ids, view_id = send_tagged_back(label_studio_client(settings), name, tag, project_id,
                                                         files_root=settings.files_root)  # fmt: skip
    except SendBackError as error:
        raise CliError(str(error)) from error
    url = f"{settings.label_studio_url}/projects/{project_id}/data?tab={view_id}"
    console.print(f"{len(task_ids)} X-rays sent to Label Studio project {project_id} for review: {url}")
