"""Running a segmentation or classification version on X-rays: what the backend, the scoring jobs
and ``fracture-al predict`` need, without the training stack (detection/mask_training.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from fracture_al.detection.mask_models import MaskModelConfig
from fracture_al.detection.model_files import load_model, to_device
from fracture_al.detection.shipped_model import verify_version
from fracture_al.detection.store import ModelVersion

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_transforms(image_size: int) -> list:
    """Resize to the network's square and normalise as the ImageNet checkpoints expect."""
    return [
        T.Resize((image_size, image_size), antialias=True),
        T.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.float32, "others": None}, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        T.ToPureTensor(),
    ]


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per network input: the fracture probability map (B, S, S; None for a classifier) and the
    X-ray's fracture probability (B,): a classifier's output, or a segmenter's highest pixel one."""
    output = torch.sigmoid(model(images).float())
    if output.dim() == 2:  # a classifier: (B, 1)
        return None, output[:, 0]
    maps = output[:, 0]
    return maps, maps.flatten(1).amax(dim=1)


def at_size(probabilities: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A network's (S, S) probability map scaled back to an X-ray's (height, width)."""
    full = F.interpolate(probabilities[None, None], size=size, mode="bilinear", align_corners=False)
    return full[0, 0].cpu().numpy()


@dataclass(frozen=True)
class MaskPrediction:
    probabilities: np.ndarray | None  # per pixel, at the X-ray's own size; None for a classifier
    probability: float  # the X-ray's: a classifier's output, or the highest pixel probability

    def mask(self, threshold: float) -> np.ndarray | None:
        return None if self.probabilities is None else self.probabilities >= threshold


class MaskPredictor:
    def __init__(self, model: torch.nn.Module, config: MaskModelConfig, device: torch.device, version: str,
                 threshold: float = 0.5):  # fmt: skip
        self.model = to_device(model, config, device).eval()
        self.config = config
        self.device = device
        self.version = version
        self.threshold = threshold
        self.transform = T.Compose(input_transforms(config.image_size))

    @classmethod
    def from_version(cls, version: ModelVersion, device: torch.device) -> MaskPredictor:
        verify_version(version)
        model, config = load_model(version.weights_path, device)
        if not isinstance(config, MaskModelConfig):
            raise ValueError(f"{version.name} is a {version.task} model, not a segmentation or classification one")
        return cls(model, config, device, version.name)

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image], *, batch_size: int = 8) -> list[MaskPrediction]:
        results: list[MaskPrediction] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            tensors = torch.stack([self.transform(tv_tensors.Image(T.functional.pil_to_tensor(image.convert("RGB"))))
                                   for image in batch]).to(self.device)  # fmt: skip
            maps, probabilities = predict_probabilities(self.model, tensors)
            for index, image in enumerate(batch):
                if maps is None:
                    results.append(MaskPrediction(None, float(probabilities[index])))
                    continue
                full = at_size(maps[index], (image.height, image.width))
                results.append(MaskPrediction(full, float(full.max(initial=0.0))))
        return results
