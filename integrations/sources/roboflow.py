"""Roboflow datasets: a version downloaded with the roboflow SDK, or an export already on disk.

Roboflow's COCO export has one folder per split (``train``, ``valid``, ``test``), each with its
images and ``_annotations.coco.json``; its YOLO exports have ``data.yaml`` beside those folders,
images in ``<split>/images`` and labels in ``<split>/labels``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fracture_al.integrations.sources.coco import read_coco
from fracture_al.integrations.sources.records import SourceFormatError, SourceImage
from fracture_al.integrations.sources.yolo import read_yolo

SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
COCO_FILE = "_annotations.coco.json"


def read_export(folder: Path) -> Iterator[SourceImage]:
    folder = Path(folder)
    if (folder / "data.yaml").is_file():
        yield from read_yolo(folder / "data.yaml")
        return
    found = False
    for name, split in SPLIT_FOLDERS.items():
        if (folder / name / COCO_FILE).is_file():
            found = True
            yield from read_coco(folder / name / COCO_FILE, folder / name, split=split)
    if not found:
        raise SourceFormatError(
            f"{folder} is not a Roboflow export: expected data.yaml (YOLO) or <split>/{COCO_FILE} (COCO)"
        )


def download_version(
    workspace: str, project: str, version: int, *, api_key: str, model_format: str, location: Path
) -> Path:
    """Download one dataset version with the roboflow SDK; returns the folder it was extracted to."""
    from roboflow import Roboflow

    dataset = (
        Roboflow(api_key=api_key)
        .workspace(workspace)
        .project(project)
        .version(version)
        .download(model_format, location=str(location), overwrite=True)
    )
    return Path(dataset.location)
