"""X-rays with their fracture masks and image-level labels, for the segmentation and classification
networks (detection/mask_models.py), read from the same COCO files as the detector's.

Each X-ray is resized to a square of the model's ``image_size`` (the networks need a fixed size;
the aspect change is undone when a predicted mask is scaled back to the X-ray) and normalised as
the ImageNet checkpoints expect. The mask is the union of the X-ray's fracture polygons, all
background on a healthy X-ray (detection/masks.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from fracture_al.detection.data import CocoFile
from fracture_al.detection.images import load_image
from fracture_al.detection.mask_predictor import input_transforms
from fracture_al.detection.masks import polygons_to_mask


def mask_transforms(image_size: int, *, train: bool) -> T.Compose:
    """Geometric augmentations move the mask with the pixels (transforms v2 resamples a Mask with
    nearest neighbours); the intensity ones touch the image alone."""
    augment = [
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.9, 1.15))], p=0.5),
        T.ColorJitter(brightness=0.2, contrast=0.25),
    ] if train else []  # fmt: skip
    return T.Compose([*augment, *input_transforms(image_size)])


class MaskDataset(Dataset):
    """Yields ``(image, mask, fractured)``: (3, S, S) normalised, (1, S, S) in {0, 1}, a 0/1 scalar."""

    def __init__(self, coco: CocoFile, image_dir: str | Path, image_size: int, *, train: bool):
        self.coco = coco
        self.image_dir = Path(image_dir)
        self.transforms = mask_transforms(image_size, train=train)

    def __len__(self) -> int:
        return len(self.coco.images)

    def true_mask(self, index: int) -> torch.Tensor:
        """The X-ray's mask at its own size, as the metrics compare with it."""
        record = self.coco.images[index]
        return torch.from_numpy(polygons_to_mask(record.polygons, record.height, record.width))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        record = self.coco.images[index]
        picture = load_image(self.image_dir / record.file_name)
        image = tv_tensors.Image(T.functional.pil_to_tensor(picture.convert("RGB")))
        mask = polygons_to_mask(record.polygons, picture.height, picture.width)
        image, mask = self.transforms(image, tv_tensors.Mask(torch.from_numpy(mask)[None].to(torch.uint8)))
        return image, mask, torch.tensor(float(bool(record.boxes or record.polygons)))
