"""What every importer yields: one X-ray file as found, with the boxes its source gives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class SourceFormatError(ValueError):
    """A source file or folder is not laid out as its format requires."""


@dataclass(frozen=True)
class SourceImage:
    path: Path
    split: str = "train"
    # (class name, [x1, y1, x2, y2] in the file's pixels); only meaningful when ``labelled``.
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)
    # False for images with no labels at all (a plain folder), True for a labelled image, even one
    # without boxes (a negative X-ray).
    labelled: bool = True
