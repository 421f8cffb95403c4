"""COCO-format fracture datasets and their transforms (torchvision transforms v2).

Images without boxes stay in the dataset as negatives: most X-rays an annotation team sees show no
fracture, and a detector that never trains on them fires on every cortex edge.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from fracture_al.detection.coco import xywh_to_xyxy
from fracture_al.detection.images import load_image
from fracture_al.detection.masks import polygons_of


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: list[list[float]]  # xyxy, pixels
    labels: list[int]  # contiguous 1..K; 0 is background
    extra: dict[str, Any]
    polygons: list[list[float]] = field(default_factory=list)  # every fracture outline, pixels (detection.masks)


class CocoFile:
    """A parsed COCO detection file, with categories mapped onto contiguous labels 1..K."""

    def __init__(self, path: str | Path, class_names: Sequence[str] | None = None):
        self.path = Path(path)
        try:
            content = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"COCO annotation file {self.path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path} is not valid JSON ({error})") from error
        for key in ("images", "categories"):
            if key not in content:
                raise ValueError(f"{self.path} is not a COCO detection file: no {key!r} list")
        self.content = content
        categories = {category["id"]: category["name"] for category in content["categories"]}
        self.class_names = list(class_names) if class_names else [categories[k] for k in sorted(categories)]
        label_of_name = {name: index + 1 for index, name in enumerate(self.class_names)}
        unknown = set(categories.values()) - set(label_of_name)
        if unknown:
            raise ValueError(
                f"{self.path} has categories {sorted(unknown)} the model does not know (it knows "
                f"{self.class_names}): map them onto its classes when importing, e.g. `fracture-al import "
                f"... --map-classes {','.join(sorted(unknown))}={self.class_names[0]}` or `--single-class "
                f"{self.class_names[0]}`, or train from ImageNet weights instead of warm-starting"
            )
        self.label_of_category = {cid: label_of_name[name] for cid, name in categories.items()}
        self.images = self._index_images()

    def _index_images(self) -> list[CocoImage]:
        boxes: dict[int, list[list[float]]] = {}
        labels: dict[int, list[int]] = {}
        polygons: dict[int, list[list[float]]] = {}
        for annotation in self.content.get("annotations", []):
            polygons.setdefault(annotation["image_id"], []).extend(polygons_of(annotation.get("segmentation")))
            x1, y1, x2, y2 = xywh_to_xyxy(annotation["bbox"])
            if x2 - x1 <= 1 or y2 - y1 <= 1:  # degenerate boxes break the box regression targets
                continue
            boxes.setdefault(annotation["image_id"], []).append([x1, y1, x2, y2])
            labels.setdefault(annotation["image_id"], []).append(self.label_of_category[annotation["category_id"]])
        reserved = {"id", "file_name", "width", "height"}
        return [
            CocoImage(
                image_id=image["id"],
                file_name=image["file_name"],
                width=image["width"],
                height=image["height"],
                boxes=boxes.get(image["id"], []),
                labels=labels.get(image["id"], []),
                extra={k: v for k, v in image.items() if k not in reserved},
                polygons=polygons.get(image["id"], []),
            )
            for image in self.content["images"]
        ]


class CocoDetection(Dataset):
    """Yields ``(image, target)`` with ``image`` a float tensor in [0, 1] and torchvision targets."""

    def __init__(
        self,
        coco: CocoFile,
        image_dir: str | Path,
        transforms: Callable[..., Any] | None = None,
    ):
        self.coco = coco
        self.image_dir = Path(image_dir)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.coco.images[index]
        image = tv_tensors.Image(T.functional.pil_to_tensor(load_image(self.image_dir / record.file_name)))
        height, width = image.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "image_id": record.image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def train_transforms() -> T.Compose:
    """Augmentations that move the boxes with the pixels; mild, because anatomy has a handedness
    only left/right flips leave plausible."""
    return T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.9, 1.15))], p=0.5),
            T.ColorJitter(brightness=0.2, contrast=0.25),
            T.ClampBoundingBoxes(),
            T.SanitizeBoundingBoxes(min_size=2),
            T.ToDtype(torch.float32, scale=True),
            T.ToPureTensor(),
        ]
    )


def eval_transforms() -> T.Compose:
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.ToPureTensor()])


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple, tuple]:
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch, strict=True))
