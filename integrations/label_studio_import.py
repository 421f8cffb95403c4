"""Dataset images into a Label Studio project as tasks, with their boxes as annotations or as
predictions, each task once however often the same files are imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from label_studio_sdk import LabelStudio

from fracture_al.integrations.dataset_folder import DatasetFolder, DatasetImage
from fracture_al.integrations.label_config import RectangleTarget, rectangle_target
from fracture_al.integrations.regions import prediction_regions
from fracture_al.integrations.task_fields import SPLIT_FIELD

BoxesAs = Literal["annotations", "predictions"]
SHA_FIELD = "source_sha256"
IMPORTED_MODEL_VERSION = "imported"
BATCH = 200


class LabelStudioImportError(ValueError):
    """The dataset cannot be served by this Label Studio (outside its local-files root)."""


@dataclass
class TaskImport:
    created: int
    already_there: int
    unmapped_classes: set[str]  # source classes with no label in the project's config (boxes dropped)


def import_dataset(
    client: LabelStudio,
    project_id: int,
    dataset: DatasetFolder,
    images: list[DatasetImage],
    *,
    files_root: Path,
    boxes_as: BoxesAs = "annotations",
) -> TaskImport:
    """Create a task per image that the project does not hold yet (known by the file's SHA-256).

    Task data holds the image's local-files URL, its split, its SHA-256 and de-identified DICOM
    tags, never the original file name (hospital exports often name files after the patient)."""
    folder = _served_folder(dataset.image_dir, files_root)
    _ensure_local_storage(client, project_id, dataset.image_dir)
    known = {(task.data or {}).get(SHA_FIELD) for task in client.tasks.list(project=project_id, fields="task_only")}
    fresh = [image for image in images if image.sha256 not in known]
    classes = tuple(sorted({name for image in fresh for name, _ in image.boxes}))
    target = rectangle_target(client.projects.get(id=project_id).label_config, classes)
    tasks = [_task(image, folder, target, boxes_as) for image in fresh]
    for start in range(0, len(tasks), BATCH):
        client.projects.import_tasks(id=project_id, request=tasks[start : start + BATCH])
    return TaskImport(len(tasks), len(images) - len(fresh), set(classes) - set(target.label_of_class))


def _served_folder(image_dir: Path, files_root: Path) -> str:
    try:
        return image_dir.resolve().relative_to(files_root.resolve()).as_posix()
    except ValueError:
        raise LabelStudioImportError(
            f"{image_dir} is outside {files_root}, the folder this Label Studio serves local files from "
            "(its LOCAL_FILES_DOCUMENT_ROOT): import into a dataset under it, "
            "or set FRACTURE_AL_LABEL_STUDIO_FILES_ROOT"
        ) from None


def _ensure_local_storage(client: LabelStudio, project_id: int, image_dir: Path) -> None:
    """Label Studio serves a local file only to projects with a storage on its folder. The storage is
    never synced: that would create a second task per file."""
    path = str(image_dir.resolve())
    if not any(storage.path == path for storage in client.import_storage.local.list(project=project_id)):
        client.import_storage.local.create(project=project_id, path=path, use_blob_urls=True, title="fracture-al")


def _task(image: DatasetImage, folder: str, target: RectangleTarget, boxes_as: BoxesAs) -> dict[str, Any]:
    url = f"/data/local-files/?d={folder}/{image.file_name}"
    data: dict[str, Any] = {target.value_key: url, SHA_FIELD: image.sha256}
    if image.labelled:
        data[SPLIT_FIELD] = image.split
    data.update({f"dicom_{name}": value for name, value in image.metadata.items()})
    task: dict[str, Any] = {"data": data}
    if not image.labelled:
        return task
    regions = prediction_regions(
        np.array([box for _, box in image.boxes], dtype=float).reshape(-1, 4),
        np.ones(len(image.boxes)),
        [name for name, _ in image.boxes],
        width=image.width,
        height=image.height,
        target=target,
        threshold=0.0,
    )
    if boxes_as == "annotations":
        task["annotations"] = [{"result": [{k: v for k, v in r.items() if k != "score"} for r in regions]}]
    elif regions:
        task["predictions"] = [{"result": regions, "score": 1.0, "model_version": IMPORTED_MODEL_VERSION}]
    return task
