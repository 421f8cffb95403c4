"""``fracture-al``: the one command line of the project."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from fracture_al.settings import SAMPLE_DIR, Settings

console = Console()
errors = Console(stderr=True, soft_wrap=True)


class CliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        errors.print(f"[bold red]error:[/] {self.format_message()}")


@click.group()
@click.option("--home", type=click.Path(path_type=Path), help="Data folder (FRACTURE_AL_HOME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device (FRACTURE_AL_DEVICE).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(context: click.Context, home: Path | None, device: str | None, verbose: bool) -> None:
    """Active learning for fracture detection on X-rays."""
    # Everything written under the home (X-rays, labels, spooled events, credentials, models) and
    # by the services started from here is for this user only: files 0600, folders 0700.
    os.umask(0o077)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    context.obj = Settings().with_overrides(home=home, device=device)


def settings_of(context: click.Context) -> Settings:
    return context.find_object(Settings)


def model_store(settings: Settings):
    from detection.shipped_model import open_store

    return open_store(settings.models_dir)


# Training and evaluation -------------------------------------------------------------------------
data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=SAMPLE_DIR,
    show_default="the bundled sample X-rays",
    help="Folder with train.json, val.json, test.json, images/.",
)


@main.command()
@data_option
@click.option("--arch", default=None, help="Architecture (default: mobilenet_v2_fpn, offline).")
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
    arch,
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
    """Train a detector and publish it as a new model version."""
    from dataclasses import replace

    from detection.recipes import recipe
    from detection.shipped_model import shipped_model_config, verified_weights, verify_version
    from detection.store import ModelStoreError
    from detection.training import Initialisation, TrainConfig, choose_device, fit
    from detection.versioning import data_sources, publish_outcome
    from detection.weights import WeightsError

    settings = settings_of(context)
    store = model_store(settings)
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
            init.model_file, model_config = verified_weights(), shipped_model_config()
        elif warm_start:
            version = store.resolve(None if warm_start == "current" else warm_start)
            verify_version(version)
            init.model_file, model_config = version.weights_path, version.model_config
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


@main.command()
@click.option("--model", "model_name", default=None, help="Model version (default: current).")
@data_option
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--image-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Image score that counts as 'fracture present'.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluate(
    context: click.Context, model_name, data_dir: Path, split: str, image_threshold: float, as_json: bool
) -> None:
    """COCO mAP and image-level metrics of a model version on a data split."""
    from detection.shipped_model import verify_version
    from detection.store import load_model
    from detection.training import TrainConfig, choose_device, evaluate_split

    settings = settings_of(context)
    version = _resolve_version(settings, model_name)
    chosen = _load_splits(data_dir)[split]
    if chosen is None:
        raise CliError(f"{data_dir} has no {split}.json")
    device = choose_device(settings.device)
    verify_version(version)
    model, config = load_model(version.weights_path, device)
    metrics, _ = evaluate_split(
        model, chosen, TrainConfig(image_threshold=image_threshold), device, flip_tta=config.flip_tta
    )
    if as_json:
        click.echo(json.dumps({"model_version": version.name, "split": split, **metrics}, indent=2))
    else:
        console.print(_metrics_table(f"{version.name} on {data_dir.name}/{split}", metrics))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", default=None, help="Model version (default: current).")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Lowest box score shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--overlay",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write <image>.pred.png with the boxes drawn into this folder.",
)
@click.pass_context
def predict(
    context: click.Context, images: tuple[Path, ...], model_name, threshold: float, as_json: bool, overlay: Path | None
) -> None:
    """Detect fractures on X-ray image files."""
    from detection.images import ImageLoadError, load_image
    from detection.plots import draw_overlay
    from detection.predictor import Predictor
    from detection.training import choose_device

    settings = settings_of(context)
    predictor = Predictor.from_version(_resolve_version(settings, model_name), choose_device(settings.device))
    results, failures = [], 0
    for path in images:
        try:
            image = load_image(path)
        except ImageLoadError as error:
            failures += 1
            errors.print(f"[red]skipped[/] {error}")
            results.append({"image": str(path), "error": str(error)})
            continue
        prediction = predictor.predict([image])[0].above(threshold)
        entry = {"image": str(path), "model_version": predictor.version, **prediction.to_dict()}
        if overlay is not None:
            entry["overlay"] = str(
                draw_overlay(
                    image,
                    prediction.boxes,
                    prediction.scores,
                    overlay / f"{path.stem}.pred.png",
                    score_threshold=threshold,
                )
            )
        results.append(entry)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        console.print(_predictions_table(results))
    if failures:
        sys.exit(1)


# Label Studio ML backend ----------------------------------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Bind address (FRACTURE_AL_BACKEND_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (FRACTURE_AL_BACKEND_PORT, default 9090).")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (each loads the model).")
@click.option("--threads", type=int, default=None, help="Threads per worker.")
@click.pass_context
def serve(context: click.Context, host: str | None, port: int | None, workers: int | None, threads: int | None) -> None:
    """Run the Label Studio ML backend under gunicorn."""
    settings = settings_of(context).with_overrides(
        backend_host=host, backend_port=port, backend_workers=workers, backend_threads=threads
    )
    # gunicorn's workers build their own Settings from the environment: hand the flags down that way.
    env = {**os.environ, "FRACTURE_AL_HOME": str(settings.home), "FRACTURE_AL_DEVICE": settings.device,
           "FRACTURE_AL_BACKEND_THREADS": str(settings.backend_threads)}  # fmt: skip
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{settings.backend_host}:{settings.backend_port}",
        "--workers", str(settings.backend_workers),
        "--threads", str(settings.backend_threads),
        "--timeout", "300",  # a "retrieve predictions" over many tasks is one long request
        "--access-logfile", "-",
        "backend.app:create_app()",
    ]  # fmt: skip
    os.execvpe(command[0], command, env)


# The whole loop on one machine ---------------------------------------------------------------------
@main.command()
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), default=SAMPLE_DIR / "images",
              show_default="the bundled sample X-rays", help="Folder of X-rays to import (DICOM too).")  # fmt: skip
@click.option("--project-title", default="Fracture X-rays", show_default=True)
@click.option("--label-studio-port", type=int, default=8080, show_default=True)
@click.option("--backend-port", type=int, default=None, help="ML backend port (FRACTURE_AL_BACKEND_PORT, 9090).")
@click.pass_context
def up(context: click.Context, images: Path, project_title: str, label_studio_port: int,
       backend_port: int | None) -> None:  # fmt: skip
    """Start Redis, Label Studio, the ML backend and a worker on loopback; Ctrl-C stops them all."""
    from fracture_al.up import Stack, StackError
    from integrations.label_studio import LabelStudioUnavailableError
    from integrations.label_studio_server import LabelStudioStartError

    settings = settings_of(context).with_overrides(backend_port=backend_port)
    # Ctrl-C, a closed terminal and a service manager's stop all end the stack cleanly, also where
    # SIGINT came in ignored (started in the background by a non-interactive shell).
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    stack = Stack(settings, images, project_title, label_studio_port, say=console.print)
    try:
        stack.check_ports()
        stack.start_redis()
        stack.ensure_model()
        url, api_key = stack.start_label_studio()
        stack.start_backend_and_worker(url, api_key)
        project_id = stack.prepare_project(url, api_key)
    except (StackError, LabelStudioStartError, LabelStudioUnavailableError) as error:
        stack.stop()
        raise CliError(str(error)) from error
    except BaseException:
        stack.stop()
        raise
    table = Table(show_header=False, title="fracture-al is ready")
    table.add_row("Label Studio", f"{url}/projects/{project_id}/data")
    login = stack.login()
    if login:
        table.add_row("login", f"{login['username']} / {login['password']}")
    table.add_row("ML backend", stack.backend_url)
    table.add_row("logs", str(stack.log_dir))
    console.print(table)
    console.print("ready: predictions and the review queue fill in as the worker scores the X-rays; Ctrl-C stops")
    exited = stack.watch()
    console.print("stopping...")
    stack.stop()
    if exited is not None:
        raise CliError(f"{exited.name} exited with {exited.process.returncode}; see {exited.log}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# Retraining workers ---------------------------------------------------------------------------------
@main.command()
@click.option("--queues", default="training,scoring", show_default=True, help="Comma-separated queue kinds.")
@click.option("--gpu", default=None, help="Pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.pass_context
def worker(context: click.Context, queues: str, gpu: str | None, name: str | None, burst: bool) -> None:
    """Run an RQ worker for the retraining and scoring queues; it waits out Redis outages."""
    from worker.connection import connect
    from worker.outages import OutageTolerantWorker, work_through_outages
    from worker.queues import get_queue, queue_name
    from worker.status import record_last_error

    settings = settings_of(context)
    # Jobs run in forked work-horses that build their own Settings: pass the choices on.
    os.environ["FRACTURE_AL_HOME"] = str(settings.home)
    os.environ["FRACTURE_AL_DEVICE"] = settings.device
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    connection = _redis(settings, connect)
    kinds = [kind.strip() for kind in queues.split(",") if kind.strip()]
    unknown = set(kinds) - {"training", "scoring"}
    if unknown:
        raise CliError(f"unknown queue kinds {sorted(unknown)}; use training and/or scoring")
    name = name or f"{socket.gethostname()}.{os.getpid()}"

    def make_worker(attempt: int) -> OutageTolerantWorker:
        return OutageTolerantWorker(
            [get_queue(settings, kind, connection) for kind in kinds],
            connection=connection,
            name=name if attempt == 0 else f"{name}.{attempt}",
            job_monitoring_interval=settings.worker_job_monitoring_interval,
            maintenance_interval=settings.worker_maintenance_interval,
            # An idle worker wakes from its blocking dequeue every worker_ttl - 15 s; only then does it
            # run the maintenance that finds abandoned jobs, so the two must match.
            worker_ttl=settings.worker_maintenance_interval + 15,
            exception_handlers=[record_last_error],
        )

    console.print(f"worker {name} on {', '.join(queue_name(settings, k) for k in kinds)} (device {settings.device})")
    work_through_outages(make_worker, connection, burst=burst)


@main.command()
@click.option("--project", "project_id", type=int, required=True, help="Label Studio project id.")
@click.pass_context
def retrain(context: click.Context, project_id: int) -> None:
    """Queue a retrain of PROJECT now (coalesced with one already waiting)."""
    from worker.connection import connect
    from worker.queues import RetrainScheduler

    settings = settings_of(context)
    request = RetrainScheduler(settings, _redis(settings, connect)).request(project_id, reason="manual", force=True)
    console.print(f"retrain of project {project_id}: {request.status} as job {request.job_id}")


@main.command()
@click.option("--limit", type=int, default=20, show_default=True, help="Jobs shown per state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(context: click.Context, limit: int, as_json: bool) -> None:
    """Queued, running, finished and failed jobs, with their progress and errors."""
    from worker.connection import connect
    from worker.status import job_rows

    settings = settings_of(context)
    rows = job_rows(settings, _redis(settings, connect), limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("state", "job", "what", "progress", "ended / error", title="fracture-al jobs")
    for row in rows:
        table.add_row(row["state"], row["id"], row["description"], row["progress"], row["outcome"])
    console.print(table)


@main.command()
@click.option("--project", "project_id", type=int, required=True, help="Label Studio project id.")
@click.option("--strategy", type=click.Choice(["uncertainty", "k_center", "kmeans_pp"]), default=None,
              help="Batch selection (FRACTURE_AL_QUEUE_STRATEGY).")  # fmt: skip
@click.option("--uncertainty", type=click.Choice(["least_confidence", "entropy", "margin", "tta"]), default=None,
              help="Acquisition score (FRACTURE_AL_QUEUE_UNCERTAINTY).")  # fmt: skip
@click.option("--batch-size", type=int, default=None, help="X-rays at the top spread over embedding space.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows shown (0 = all).")
@click.option("--refresh", is_flag=True, help="Queue a re-scoring of the project with the current model.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue(
    context: click.Context,
    project_id: int,
    strategy: str | None,
    uncertainty: str | None,
    batch_size: int | None,
    top: int,
    refresh: bool,
    as_json: bool,
) -> None:
    """The review queue of PROJECT: its unlabelled X-rays, the one to label first on top.

    Shows the queue last written to Label Studio, ranked again from the same scores when another
    --strategy, --uncertainty or --batch-size is asked for."""
    from worker.connection import connect
    from worker.queues import enqueue_job
    from worker.review_queue import ReviewQueueStore, rank_options, rank_stored_signals

    settings = settings_of(context)
    connection = _redis(settings, connect)
    if refresh:
        version = _resolve_version(settings, None).name
        job = enqueue_job(settings, "scoring", connection, "worker.jobs.refresh_predictions", project_id, version,
                          description=f"score project {project_id} with {version}")  # fmt: skip
        console.print(f"scoring of project {project_id} with {version} queued as job {job.id}")
        return
    store = ReviewQueueStore(settings, connection)
    ranking = store.ranking(project_id)
    if ranking is None:
        raise CliError(
            f"project {project_id} has no review queue yet: it is ranked after each new model version, "
            f"or run `fracture-al queue --project {project_id} --refresh` with a worker running"
        )
    options = rank_options(settings, strategy=strategy, uncertainty=uncertainty, batch_size=batch_size)
    entries = ranking["entries"]
    if options != ranking["options"]:
        pool = {entry["task_id"] for entry in entries}
        try:
            ranked = rank_stored_signals(store, project_id, ranking["model_version"], pool, options)
        except ValueError as error:
            raise CliError(str(error)) from error
        entries = [entry.to_dict() for entry in ranked]
    shown = entries[:top] if top else entries
    if as_json:
        payload = {"project": project_id, "model_version": ranking["model_version"], "options": options}
        click.echo(json.dumps({**payload, "total": len(entries), "entries": shown}, indent=2))
        return
    title = f"review queue of project {project_id} ({ranking['model_version']}, {options['uncertainty']}, " \
            f"{options['strategy']}): {len(entries)} unlabelled X-rays"  # fmt: skip
    table = Table("rank", "task", "uncertainty", "prediction score", title=title)
    for entry in shown:
        table.add_row(str(entry["rank"]), str(entry["task_id"]), f"{entry['uncertainty']:.4f}",
                      f"{entry['queue_score']:.4f}")  # fmt: skip
    console.print(table)


def _redis(settings: Settings, connect):
    from redis.exceptions import ConnectionError as RedisConnectionError

    connection = connect(settings)
    try:
        connection.ping()
    except RedisConnectionError as error:
        raise CliError(f"Redis at {settings.redis_url or settings.redis_file} is unreachable ({error})") from error
    return connection


# Importing data ------------------------------------------------------------------------------------
@main.group("import")
def import_group() -> None:
    """Bring X-rays in: into a dataset folder the trainer reads, and as Label Studio tasks."""


def import_options(function):
    options = [
        click.option("--dataset", default=None,
                     help="Dataset name under FRACTURE_AL_HOME/datasets (default: the source's name)."),
        click.option("--project", "project_id", type=int, default=None,
                     help="Also create tasks in this Label Studio project."),
        click.option("--boxes-as", type=click.Choice(["annotations", "predictions"]), default="annotations",
                     show_default=True, help="How existing boxes arrive in Label Studio."),
        click.option("--keep-identifying-tags", is_flag=True,
                     help="Copy every DICOM tag into task data (default: technical tags only)."),
        click.option("--map-classes", "class_rules", multiple=True, metavar="A,B=TARGET",
                     help="Rename source classes, e.g. angle,line,messed_up_angle=fracture (repeatable)."),
        click.option("--single-class", default=None, metavar="NAME",
                     help="Import every box as this one class (e.g. fracture)."),
        click.option("--keep-source-paths", is_flag=True,
                     help="Record each file's original path (default: only its SHA-256; paths may name patients)."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


@import_group.command("coco")
@click.argument("annotations", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--images", "image_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder the file names are relative to (default: the json's folder).")  # fmt: skip
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@import_options
@click.pass_context
def import_coco(context: click.Context, annotations: Path, image_dir: Path | None, split: str, **options: Any) -> None:
    """A COCO detection file."""
    from integrations.sources.coco import read_coco

    _import(context, read_coco(annotations, image_dir, split=split), options, default_name=annotations.parent.name)


@import_group.command("yolo")
@click.argument("data_yaml", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@import_options
@click.pass_context
def import_yolo(context: click.Context, data_yaml: Path, **options: Any) -> None:
    """A YOLO dataset, named by its data.yaml."""
    from integrations.sources.yolo import read_yolo

    _import(context, read_yolo(data_yaml), options, default_name=data_yaml.parent.name)


@import_group.command("folder")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@import_options
@click.pass_context
def import_folder(context: click.Context, folder: Path, **options: Any) -> None:
    """A folder of unlabelled X-rays: JPEG, PNG (16-bit too), TIFF and DICOM."""
    from integrations.sources.folder import read_folder

    _import(context, read_folder(folder), options, default_name=folder.name)


@import_group.command("roboflow-export")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@import_options
@click.pass_context
def import_roboflow_export(context: click.Context, folder: Path, **options: Any) -> None:
    """A Roboflow export already on disk (COCO or YOLO)."""
    from integrations.sources.roboflow import read_export

    _import(context, read_export(folder), options, default_name=folder.name)


@import_group.command("roboflow")
@click.argument("version_id", metavar="WORKSPACE/PROJECT/VERSION")
@click.option("--format", "model_format", type=click.Choice(["coco", "yolov8"]), default="coco", show_default=True)
@import_options
@click.pass_context
def import_roboflow(context: click.Context, version_id: str, model_format: str, **options: Any) -> None:
    """Download a Roboflow dataset version (API key from ROBOFLOW_API_KEY) and import it."""
    from integrations.sources.roboflow import download_version, read_export

    settings = settings_of(context)
    parts = version_id.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise CliError(f"expected WORKSPACE/PROJECT/VERSION such as my-team/wrist-fractures/3, got {version_id!r}")
    if settings.roboflow_api_key is None or not settings.roboflow_api_key.get_secret_value():
        raise CliError("set ROBOFLOW_API_KEY to download from Roboflow")
    workspace, project, version = parts
    location = settings.home / "downloads" / "roboflow" / f"{workspace}-{project}-{version}-{model_format}"
    try:
        folder = download_version(workspace, project, int(version), model_format=model_format, location=location,
                                  api_key=settings.roboflow_api_key.get_secret_value())  # fmt: skip
    except Exception as error:  # the SDK raises RuntimeError, HTTP and JSON errors alike
        raise CliError(f"Roboflow download of {version_id} failed: {error}") from error
    _import(context, read_export(folder), options, default_name=f"{project}-v{version}")


def _import(context: click.Context, sources, options: dict[str, Any], *, default_name: str) -> None:
    from integrations.dataset_folder import DatasetFolder
    from integrations.sources.records import ClassMapping, SourceFormatError

    settings = settings_of(context)
    dataset = DatasetFolder(settings.datasets_dir / (options["dataset"] or default_name))
    try:
        mapping = ClassMapping.parse(options["class_rules"], options["single_class"])
        report = dataset.add(mapping.apply(sources), deidentify=not options["keep_identifying_tags"],
                             keep_source_paths=options["keep_source_paths"])  # fmt: skip
    except SourceFormatError as error:
        raise CliError(str(error)) from error
    console.print(f"dataset {dataset.root}: {len(report.added)} added, {len(report.duplicates)} already there, "
                  f"{len(report.failed)} failed")  # fmt: skip
    if report.failed:
        table = Table("file", "why it was not imported", title="not imported")
        for path, reason in report.failed.items():
            table.add_row(path, reason)
        errors.print(table)
    if options["project_id"] is not None:
        _import_tasks(settings, dataset, options["project_id"], options["boxes_as"])
    if report.failed and not report.added and not report.duplicates:
        raise CliError("nothing could be imported")


def _import_tasks(settings: Settings, dataset, project_id: int, boxes_as: str) -> None:
    from integrations.label_studio import LabelStudioUnavailableError, connect
    from integrations.label_studio_import import LabelStudioImportError, import_dataset

    if not settings.label_studio_url or settings.label_studio_api_key is None:
        raise CliError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to create Label Studio tasks")
    try:
        client = connect(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
        result = import_dataset(client, project_id, dataset, dataset.images(), files_root=settings.files_root,
                                boxes_as=boxes_as)  # fmt: skip
    except (LabelStudioUnavailableError, LabelStudioImportError) as error:
        raise CliError(str(error)) from error
    console.print(f"Label Studio project {project_id}: {result.created} tasks created, "
                  f"{result.already_there} already there")  # fmt: skip
    if result.unmapped_classes:
        errors.print(f"[yellow]warning:[/] classes {sorted(result.unmapped_classes)} match no label of the "
                     "project's config; their boxes were left out")  # fmt: skip


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
    """Build or refresh a FiftyOne dataset: labels, predictions, evaluation, Brain, saved views."""
    from detection.predictor import Predictor
    from detection.training import choose_device
    from integrations.fiftyone_inspect import build_dataset, configure_fiftyone, images_from_folder, inspect_images

    settings = settings_of(context)
    if (project_id is None) == (data_dir is None):
        raise CliError("give one of --project (a Label Studio project) or --data (a dataset folder)")
    configure_fiftyone(settings.home)
    version = _resolve_version(settings, model_version)
    predictor = Predictor.from_version(version, choose_device(settings.device))
    if data_dir is not None:
        name = name or f"fracture-al-{data_dir.resolve().name}"
        images = images_from_folder(data_dir)
        info = {"source": "folder", "data": str(data_dir.resolve())}
    else:
        name = name or f"fracture-al-project-{project_id}"
        images = _label_studio_images(settings, project_id, predictor.config.class_names)
        info = {"source": "label_studio", "project": project_id}
    if not images:
        raise CliError("no images to inspect")
    uncertainty = settings.queue_uncertainty if settings.queue_uncertainty != "tta" else "entropy"
    # FiftyOne and scikit-learn print progress to stdout: with --json it goes to stderr instead.
    with _stdout_to_stderr() if as_json else contextlib.nullcontext():
        samples = inspect_images(images, predictor, batch_size=settings.predict_batch_size, uncertainty=uncertainty)
        summary = build_dataset(name, samples, score_threshold=settings.predict_score_threshold,
                                duplicate_threshold=settings.inspect_duplicate_threshold,
                                plot_dir=settings.home / "inspections" / name,
                                info={**info, "model_version": version.name})  # fmt: skip
    if as_json:
        click.echo(json.dumps({**vars(summary), "pr_curve": str(summary.pr_curve) if summary.pr_curve else None}))
        return
    table = Table("", "", title=f"FiftyOne dataset {name} ({version.name})", show_header=False)
    table.add_row("samples (labelled)", f"{summary.samples} ({summary.labelled})")
    table.add_row("mAP (FiftyOne, COCO-style)", _fmt(summary.mAP))
    table.add_row("boxes: TP / FP / FN @ IoU 0.5", f"{summary.true_positives} / {summary.false_positives} / "
                  f"{summary.false_negatives}")  # fmt: skip
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


def _label_studio_images(settings: Settings, project_id: int, class_names: list[str]):
    from integrations.fiftyone_inspect import images_from_label_studio
    from integrations.image_source import ImageSource
    from integrations.label_config import rectangle_target
    from integrations.label_studio import LabelStudioUnavailableError
    from worker.jobs import label_studio_client, label_studio_connection

    try:
        client = label_studio_client(settings)
    except (RuntimeError, LabelStudioUnavailableError) as error:
        raise CliError(str(error)) from error
    target = rectangle_target(client.projects.get(id=project_id).label_config, tuple(class_names))
    source, connection = ImageSource.from_settings(settings), label_studio_connection(settings)
    media = settings.home / "fiftyone-media" / f"project-{project_id}"
    return images_from_label_studio(client, project_id, lambda ref: source.fetch(ref, connection), media, target)


@main.command()
@click.option("--name", default=None, help="Dataset to open (default: the most recently built one).")
@click.option("--port", type=int, default=5151, show_default=True)
@click.pass_context
def app(context: click.Context, name: str | None, port: int) -> None:
    """Launch the FiftyOne App on loopback (remote mode: open the printed URL)."""
    from integrations.fiftyone_inspect import configure_fiftyone
    from integrations.loopback import port_is_free

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
    from integrations.dataset_folder import DatasetFolder
    from integrations.fiftyone_inspect import configure_fiftyone
    from integrations.label_studio import request_review
    from integrations.label_studio_import import SHA_FIELD, LabelStudioImportError, import_dataset
    from worker.jobs import label_studio_client

    settings = settings_of(context)
    configure_fiftyone(settings.home)
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise CliError(f"no FiftyOne dataset {name!r}")
    dataset = fo.load_dataset(name)
    tagged = dataset.match_tags(tag)
    if not len(tagged):
        raise CliError(f"no sample of {name} is tagged {tag!r}")
    client = label_studio_client(settings)
    if dataset.info.get("source") == "label_studio":
        project_id, task_ids = dataset.info["project"], tagged.values("task_id")
    else:
        if project_id is None:
            raise CliError("this dataset was built from a folder: say which Label Studio project gets the tasks")
        if not tagged.has_field("sha256"):
            raise CliError("only datasets written by `fracture-al import` can be sent to Label Studio; import it")
        folder = DatasetFolder(Path(dataset.info["data"]))
        wanted = set(tagged.values("sha256"))
        try:
            import_dataset(client, project_id, folder, [i for i in folder.images() if i.sha256 in wanted],
                           files_root=settings.files_root, boxes_as="annotations")  # fmt: skip
        except LabelStudioImportError as error:
            raise CliError(str(error)) from error
        task_ids = [t.id for t in client.tasks.list(project=project_id) if (t.data or {}).get(SHA_FIELD) in wanted]
    view_id = request_review(client, project_id, task_ids, tag)
    url = f"{settings.label_studio_url}/projects/{project_id}/data?tab={view_id}"
    console.print(f"{len(task_ids)} X-rays sent to Label Studio project {project_id} for review: {url}")


# Model store ----------------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """List, inspect and promote (or roll back) model versions."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(context: click.Context, as_json: bool) -> None:
    store = model_store(settings_of(context))
    current = store.current_name()
    rows = [
        {"version": v.name, "current": v.name == current, **_headline(v.metrics),
         "source": v.provenance.get("source", "trained"), "gate": (v.provenance.get("gate") or {}).get("reason")}
        for v in store.list()
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("version", "current", "source", "test mAP@50", "test mAP@75", "test AUROC", "val mAP@50", "gate",
                  title=str(store.root))  # fmt: skip
    for row in rows:
        table.add_row(row["version"], "*" if row["current"] else "", row["source"],
                      *(_fmt(row[k]) for k in _HEADLINE), row["gate"] or "")  # fmt: skip
    console.print(table)


@models.command("show")
@click.argument("version", required=False)
@click.pass_context
def models_show(context: click.Context, version: str | None) -> None:
    """Config, metrics and plot files of a version (default: current)."""
    _print_version(_resolve_version(settings_of(context), version))


@models.command("promote")
@click.argument("version")
@click.pass_context
def models_promote(context: click.Context, version: str) -> None:
    """Serve VERSION from now on (also how to roll back)."""
    from detection.store import ModelStoreError

    try:
        promoted = model_store(settings_of(context)).promote(version)
    except ModelStoreError as error:
        raise CliError(str(error)) from error
    console.print(f"current model is now [bold]{promoted.name}[/]")


# Helpers -------------------------------------------------------------------------------------------
_HEADLINE = ("test_mAP50", "test_mAP75", "test_auroc", "val_mAP50")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    test, validation = metrics.get("test", {}), metrics.get("validation", {})
    return {
        "test_mAP50": test.get("mAP50"),
        "test_mAP75": test.get("mAP75"),
        "test_auroc": test.get("auroc"),
        "val_mAP50": validation.get("mAP50"),
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _new_run_name() -> str:
    import datetime

    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _load_splits(data_dir: Path, class_names: list[str] | None = None):
    from detection.training import load_splits

    try:
        return load_splits(data_dir, class_names=class_names)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from error


def _resolve_version(settings: Settings, name: str | None):
    from detection.store import ModelStoreError

    try:
        return model_store(settings).resolve(name)
    except ModelStoreError as error:
        raise CliError(str(error)) from error


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(key, _fmt(value))
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
    console.print(f"training: {metrics.get('train_images_per_second', 0):.2f} images/s")
    for plot in version.plots:
        console.print(f"plot: {plot}")


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
                console.print(f"  {name}: {_fmt(d['value'])} (95% interval {_fmt(d['low'])} to {_fmt(d['high'])}, "
                              f"better in {_fmt(d['probability_better'])} of resamples)")  # fmt: skip
    for key, value in provenance.items():
        if key not in ("source", "label_studio_project", "warm_start", "sha256", "trained_on", "validated_on", "gate",
                       "validation_assigned"):  # fmt: skip
            console.print(f"{key}: {value}")


_METRIC_KEYS = ("mAP", "mAP50", "mAP75", "AR100", "accuracy", "sensitivity", "specificity", "auroc")


def _predictions_table(results: list[dict[str, Any]]) -> Table:
    table = Table("image", "label", "score", "box (x1, y1, x2, y2) px", title="fracture detections")
    for result in results:
        if "error" in result:
            table.add_row(result["image"], "[red]error[/]", "", result["error"])
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
