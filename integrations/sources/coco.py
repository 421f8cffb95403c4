"""COCO detection files (also Roboflow's ``_annotations.coco.json`` exports)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fracture_al.detection.coco import boxes_by_image
from fracture_al.integrations.sources.records import SourceFormatError, SourceImage


def read_coco(annotations: Path, image_dir: Path | None = None, *, split: str = "train") -> Iterator[SourceImage]:
    """Every image of the file, its boxes converted from ``[x, y, w, h]`` to ``[x1, y1, x2, y2]``.

    Roboflow writes a category for the dataset itself (its ``supercategory`` is "none" and every
    real class names it as theirs); it labels nothing and is dropped."""
    try:
        content = json.loads(Path(annotations).read_text())
        images, categories = content["images"], content["categories"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SourceFormatError(f"{annotations}: not a COCO detection file ({error})") from error
    image_dir = Path(image_dir) if image_dir else Path(annotations).parent
    parents = {c.get("supercategory") for c in categories}
    name_of = {
        c["id"]: c["name"] for c in categories if not (c.get("supercategory") == "none" and c["name"] in parents)
    }
    boxes_of = boxes_by_image(content.get("annotations", []), name_of)
    for image in images:
        yield SourceImage(image_dir / image["file_name"], split, boxes_of.get(image["id"], []))
