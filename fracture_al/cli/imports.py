"""Bringing X-rays in: ``import coco|yolo|folder|roboflow-export|roboflow``, into a dataset folder
and, with ``--project``, as Label Studio tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fracture_al.cli.base import CliError, console, errors, label_studio_client, main, settings_of
from fracture_al.settings import Settings


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
    from fracture_al.integrations.sources.coco import read_coco

    _import(context, read_coco(annotations, image_dir, split=split), options, default_name=annotations.parent.name)


@import_group.command("yolo")
@click.argument("data_yaml", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@import_options
@click.pass_context
def import_yolo(context: click.Context, data_yaml: Path, **options: Any) -> None:
    """A YOLO dataset, named by its data.yaml."""
    from fracture_al.integrations.sources.yolo import read_yolo

    _import(context, read_yolo(data_yaml), options, default_name=data_yaml.parent.name)


@import_group.command("folder")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@import_options
@click.pass_context
def import_folder(context: click.Context, folder: Path, **options: Any) -> None:
    """A folder of unlabelled X-rays: JPEG, PNG (16-bit too), TIFF and DICOM."""
    from fracture_al.integrations.sources.folder import read_folder

    _import(context, read_folder(folder), options, default_name=folder.name)


@import_group.command("roboflow-export")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@import_options
@click.pass_context
def import_roboflow_export(context: click.Context, folder: Path, **options: Any) -> None:
    """A Roboflow export already on disk (COCO or YOLO)."""
    from fracture_al.integrations.sources.roboflow import read_export

    _import(context, read_export(folder), options, default_name=folder.name)


@import_group.command("roboflow")
@click.argument("version_id", metavar="WORKSPACE/PROJECT/VERSION")
@click.option("--format", "model_format", type=click.Choice(["coco", "yolov8"]), default="coco", show_default=True)
@import_options
@click.pass_context
def import_roboflow(context: click.Context, version_id: str, model_format: str, **options: Any) -> None:
    """Download a Roboflow dataset version (API key from ROBOFLOW_API_KEY) and import it."""
    from fracture_al.integrations.sources.roboflow import download_version, read_export

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
    from fracture_al.integrations.dataset_folder import DatasetFolder
    from fracture_al.integrations.sources.records import ClassMapping, SourceFormatError

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
    from fracture_al.integrations.label_studio_import import LabelStudioImportError, import_dataset

    client = label_studio_client(settings)
    try:
        result = import_dataset(client, project_id, dataset, dataset.images(), files_root=settings.files_root,
                                boxes_as=boxes_as)  # fmt: skip
    except LabelStudioImportError as error:
        raise CliError(str(error)) from error
    console.print(f"Label Studio project {project_id}: {result.created} tasks created, "
                  f"{result.already_there} already there")  # fmt: skip
    if result.unmapped_classes:
        errors.print(f"[yellow]warning:[/] classes {sorted(result.unmapped_classes)} match no label of the "
                     "project's config; their boxes were left out")  # fmt: skip
