"""What a model version was made from: every image it was trained and validated on, by content.

A version folder's ``provenance.json`` lists, per image, its id in the data it came from, the
SHA-256 of the exact file the trainer read and whatever the source recorded beside it (for a Label
Studio export: the annotation id), so a served model can be traced to the labels behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fracture_al.detection.digests import sha256_of

if TYPE_CHECKING:  # the type only: `fracture-al report` reads provenance without the training stack
    from fracture_al.detection.training import DataSplit

PROVENANCE_FILE = "provenance.json"


def exported_records(split: DataSplit) -> list[dict[str, Any]]:
    return [
        {"image_id": record.image_id, "sha256": sha256_of(split.image_dir / record.file_name),
         "boxes": len(record.boxes), **{k: v for k, v in record.extra.items() if k == "annotation_id"}}
        for record in split.coco.images
    ]  # fmt: skip
