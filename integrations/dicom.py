"""DICOM radiographs to 8-bit images for Label Studio and the detector, de-identified by default.

Display pipeline, in the standard's order: stored values -> Modality LUT (rescale slope/intercept)
-> VOI LUT or window centre/width -> MONOCHROME1 inverted so that bone is bright -> linear to 0..255.
Only an allow-list of technical tags is copied out: nothing that names or dates a patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from fracture_al.detection.images import ImageLoadError, rescale_to_uint8

# Tags safe to keep with a task: they describe the acquisition, not the person.
SAFE_TAGS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "PixelSpacing",
    "ImagerPixelSpacing",
)


@dataclass
class DicomImage:
    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)  # SAFE_TAGS only, unless asked otherwise


def is_dicom(path: str | Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path, *, deidentify: bool = True) -> DicomImage:
    """The radiograph as 8-bit RGB in display contrast, with de-identified metadata."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except (InvalidDicomError, FileNotFoundError) as error:
        raise ImageLoadError(f"{path}: not a readable DICOM file ({error})") from error
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as error:
        # No pixel data, or a compressed transfer syntax without its decoder installed.
        raise ImageLoadError(f"{path}: DICOM pixel data cannot be decoded ({error})") from error
    if pixels.ndim != 2:
        raise ImageLoadError(f"{path}: expected one grayscale frame, got pixel array of shape {pixels.shape}")
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float64)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        values = values.max() + values.min() - values  # MONOCHROME1: low values are white
    image = Image.fromarray(rescale_to_uint8(values)).convert("RGB")
    return DicomImage(image, _metadata(dataset, deidentify))


def _metadata(dataset: pydicom.Dataset, deidentify: bool) -> dict[str, Any]:
    names = SAFE_TAGS if deidentify else [element.keyword for element in dataset if element.keyword]
    kept = {}
    for name in names:
        value = dataset.get(name)
        if value is None or name == "PixelData":
            continue
        kept[name] = [float(v) for v in value] if isinstance(value, pydicom.multival.MultiValue) else _plain(value)
    return kept


def _plain(value: Any) -> Any:
    if isinstance(value, int | float | str):
        return value
    return str(value)
