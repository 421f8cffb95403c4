"""A plain folder of X-rays (JPEG, PNG incl. 16-bit, TIFF, DICOM): images with no labels yet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fracture_al.detection.images import IMAGE_SUFFIXES
from fracture_al.integrations.dicom import is_dicom
from fracture_al.integrations.sources.records import SourceImage


def read_folder(folder: Path, *, split: str = "train") -> Iterator[SourceImage]:
    """Every image file under ``folder``, recursively; DICOM files are known by their content, since
    PACS exports often have no extension."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == ".dcm" or is_dicom(path):
            yield SourceImage(path, split, [], labelled=False)
