"""YOLO detection datasets: ``data.yaml`` naming the classes and the split folders, one ``.txt`` per
image with ``class x_centre y_centre width height`` in fractions of the image (Roboflow's YOLO
exports, Ultralytics' layout)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from fracture_al.detection.images import IMAGE_SUFFIXES
from fracture_al.integrations.sources.records import SourceFormatError, SourceImage

SPLIT_KEYS = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def read_yolo(data_yaml: Path) -> Iterator[SourceImage]:
    try:
        config = yaml.safe_load(Path(data_yaml).read_text())
        names = config["names"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise SourceFormatError(f"{data_yaml}: not a YOLO data.yaml with `names` ({error})") from error
    names = [names[key] for key in sorted(names)] if isinstance(names, dict) else list(names)
    root = Path(data_yaml).parent
    for key, split in SPLIT_KEYS.items():
        if key not in config:
            continue
        image_dir = _image_dir(root, config.get("path"), config[key])
        if image_dir is None:
            continue
        for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            yield _labelled(path, image_dir.parent / "labels" / f"{path.stem}.txt", names, split)


def _image_dir(root: Path, base: str | None, entry: str) -> Path | None:
    """Ultralytics resolves split folders against ``path``; Roboflow writes ``../train/images``,
    relative to a folder above data.yaml. The first candidate that exists wins."""
    candidates = [root / (base or "") / entry, root / entry]
    if entry.startswith("../"):
        candidates.append(root / entry[3:])
    return next((candidate for candidate in candidates if candidate.is_dir()), None)


def _labelled(path: Path, label_file: Path, names: list[str], split: str) -> SourceImage:
    if not label_file.is_file():
        return SourceImage(path, split, [], labelled=False)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError):
        return SourceImage(path, split, [])  # the importer reports the unreadable image
    boxes = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:  # segmentation polygons or garbage: not a box line
            raise SourceFormatError(f"{label_file}:{number}: expected `class xc yc w h`, got {line!r}")
        index, xc, yc, w, h = int(fields[0]), *(float(v) for v in fields[1:])
        if not 0 <= index < len(names):
            raise SourceFormatError(f"{label_file}:{number}: class {index} is not in data.yaml's names")
        boxes.append((names[index], [(xc - w / 2) * width, (yc - h / 2) * height,
                                     (xc + w / 2) * width, (yc + h / 2) * height]))  # fmt: skip
    return SourceImage(path, split, boxes)
