"""A fracture-al dataset folder: what every importer writes and the trainer reads.

Layout: ``images/`` and one COCO file per split (``train.json``, ``val.json``, ``test.json``), plus
``unlabelled.json`` for images with no labels yet, which must never train as negatives. Files are
named by the SHA-256 of their bytes, so importing the same file twice adds it once. JPEGs and
8-bit PNGs are copied unchanged; DICOM and high-bit-depth images are converted to 8-bit PNG in
display contrast, since neither Label Studio nor browsers show them properly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fracture_al.detection.coco import annotation_record, boxes_by_image
from fracture_al.detection.images import ImageLoadError, load_image
from fracture_al.integrations.dicom import is_dicom, read_dicom
from fracture_al.integrations.sources.records import SourceImage

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "unlabelled")
KEPT_AS_IS = {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P")}


@dataclass(frozen=True)
class DatasetImage:
    image_id: int
    file_name: str  # under images/
    width: int
    height: int
    split: str
    sha256: str
    boxes: list[tuple[str, list[float]]]
    metadata: dict[str, Any] = field(default_factory=dict)  # de-identified DICOM tags

    @property
    def labelled(self) -> bool:
        return self.split != "unlabelled"


@dataclass
class ImportReport:
    added: list[DatasetImage] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # source paths already in the dataset
    failed: dict[str, str] = field(default_factory=dict)  # source path -> why it was left out


class DatasetFolder:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.image_dir = self.root / "images"

    def images(self) -> list[DatasetImage]:
        found = []
        for split, content in self._load().items():
            boxes_of = boxes_by_image(content["annotations"], {c["id"]: c["name"] for c in content["categories"]})
            for i in content["images"]:
                boxes = boxes_of.get(i["id"], [])
                found.append(DatasetImage(i["id"], i["file_name"], i["width"], i["height"], split, i["sha256"],
                                          boxes, i.get("metadata", {})))  # fmt: skip
        return found

    def add(
        self, sources: Iterable[SourceImage], *, deidentify: bool = True, keep_source_paths: bool = False
    ) -> ImportReport:
        """Copy or convert each source image in, with its boxes; a file that cannot be read is
        reported and the rest imported. Images are known by their content's SHA-256, which is
        what re-importing needs; their original paths (hospital exports often put patient names
        in them) are kept only with ``keep_source_paths``."""
        self.image_dir.mkdir(parents=True, exist_ok=True)
        splits = self._load()
        known = {image["sha256"] for content in splits.values() for image in content["images"]}
        next_id = 1 + max((image["id"] for c in splits.values() for image in c["images"]), default=0)
        report = ImportReport()
        for source in sources:
            try:
                raw = source.path.read_bytes()
            except OSError as error:
                report.failed[str(source.path)] = f"cannot be read ({error.strerror or error})"
                continue
            sha256 = hashlib.sha256(raw).hexdigest()
            if sha256 in known:
                report.duplicates.append(str(source.path))
                continue
            try:
                data, suffix, width, height, metadata = _materialise(source.path, raw, deidentify)
            except ImageLoadError as error:
                report.failed[str(source.path)] = str(error)
                log.warning("not imported: %s", error)
                continue
            file_name = f"{sha256[:24]}{suffix}"
            (self.image_dir / file_name).write_bytes(data)
            split = source.split if source.labelled else "unlabelled"
            image = DatasetImage(next_id, file_name, width, height, split, sha256, source.boxes, metadata)
            _append(splits.setdefault(split, _empty()), image, source.path if keep_source_paths else None)
            known.add(sha256)
            next_id += 1
            report.added.append(image)
        self._save(splits)
        return report

    def _load(self) -> dict[str, dict[str, Any]]:
        return {
            split: json.loads((self.root / f"{split}.json").read_text())
            for split in SPLITS
            if (self.root / f"{split}.json").is_file()
        }

    def _save(self, splits: dict[str, dict[str, Any]]) -> None:
        classes = sorted({c["name"] for content in splits.values() for c in content["categories"]})
        for split, content in splits.items():
            # Every split numbers the classes alike, as the trainer expects.
            old_names = {c["id"]: c["name"] for c in content["categories"]}
            new_id = {name: index + 1 for index, name in enumerate(classes)}
            for annotation in content["annotations"]:
                annotation["category_id"] = new_id[old_names[annotation["category_id"]]]
            content["categories"] = [{"id": new_id[name], "name": name} for name in classes]
            temporary = self.root / f".{split}.json.tmp"
            temporary.write_text(json.dumps(content))
            temporary.replace(self.root / f"{split}.json")


def _empty() -> dict[str, list]:
    return {"images": [], "annotations": [], "categories": []}


def _append(content: dict[str, Any], image: DatasetImage, source_path: Path | None) -> None:
    entry = {"id": image.image_id, "file_name": image.file_name, "width": image.width, "height": image.height,
             "sha256": image.sha256, "metadata": image.metadata}  # fmt: skip
    if source_path is not None:
        entry["source"] = str(source_path)
    content["images"].append(entry)
    category_of = {c["name"]: c["id"] for c in content["categories"]}
    for class_name, box in image.boxes:
        if class_name not in category_of:
            category_of[class_name] = len(category_of) + 1
            content["categories"].append({"id": category_of[class_name], "name": class_name})
        content["annotations"].append(
            annotation_record(len(content["annotations"]) + 1, image.image_id, category_of[class_name], box)
        )


def _materialise(path: Path, raw: bytes, deidentify: bool) -> tuple[bytes, str, int, int, dict[str, Any]]:
    """(file bytes, suffix, width, height, metadata) of the image as the dataset keeps it."""
    if is_dicom(path):
        dicom = read_dicom(path, deidentify=deidentify)
        return _png(dicom.image), ".png", dicom.image.width, dicom.image.height, dicom.metadata
    image = load_image(raw, name=str(path))
    with Image.open(io.BytesIO(raw)) as original:
        kind = (original.format, original.mode)
    if kind in KEPT_AS_IS:
        return raw, ".jpg" if kind[0] == "JPEG" else ".png", image.width, image.height, {}
    return _png(image), ".png", image.width, image.height, {}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
