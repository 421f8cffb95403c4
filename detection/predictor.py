"""Batched inference with a saved model version: PIL images in, boxes in pixels out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from fracture_al.detection.image_score import UNCALIBRATED, ProbabilityCalibration, fracture_probability
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.model_files import load_model, to_device
from fracture_al.detection.shipped_model import verify_version
from fracture_al.detection.store import ModelVersion
from fracture_al.detection.tta import detect


@dataclass(frozen=True)
class ImagePrediction:
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) xyxy pixels, highest score first
    scores: np.ndarray  # (N,)
    class_names: list[str]  # (N,)
    calibration: ProbabilityCalibration = UNCALIBRATED  # the version's own

    @property
    def image_score(self) -> float:
        """The model's probability that the X-ray shows a fracture: :func:`fracture_probability` of
        its boxes, through the version's calibration."""
        return self.calibration(fracture_probability(self.scores))

    def above(self, threshold: float) -> ImagePrediction:
        keep = self.scores >= threshold
        return ImagePrediction(
            self.width,
            self.height,
            self.boxes[keep],
            self.scores[keep],
            [name for name, kept in zip(self.class_names, keep, strict=True) if kept],
            self.calibration,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "image_score": self.image_score,
            "detections": [
                {"label": name, "score": round(float(score), 4), "box_xyxy": [round(float(v), 1) for v in box]}
                for box, score, name in zip(self.boxes, self.scores, self.class_names, strict=True)
            ],
        }


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        device: torch.device,
        version: str,
        operating_threshold: float | None = None,
        calibration: ProbabilityCalibration = UNCALIBRATED,
    ):
        self.model = to_device(model, config, device).eval()
        self.config = config
        self.device = device
        self.version = version
        self.operating_threshold = operating_threshold  # the version's own display threshold, if calibrated
        self.calibration = calibration  # of its fracture probability, fitted on its validation X-rays

    @classmethod
    def from_version(cls, version: ModelVersion, device: torch.device) -> Predictor:
        verify_version(version)
        model, config = load_model(version.weights_path, device)
        return cls(model, config, device, version.name, version.operating_threshold, version.probability_calibration)

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image], *, batch_size: int = 8) -> list[ImagePrediction]:
        results: list[ImagePrediction] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            tensors = [self._tensor(image) for image in batch]
            with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
                outputs = detect(self.model, tensors, flip_tta=self.config.flip_tta)
            results.extend(self._to_prediction(image, output) for image, output in zip(batch, outputs, strict=True))
        return results

    @torch.inference_mode()
    def predict_augmented(
        self, images: Sequence[Image.Image], *, rescale: float = 0.8, batch_size: int = 8
    ) -> list[list[ImagePrediction]]:
        """Each image's predictions on a horizontally flipped and on a rescaled view, with the boxes
        mapped back onto the original pixels (for consistency-based uncertainty).

        The detector resizes every input to its own ``min_size``, so the rescaled view is made by
        changing that target size for the pass, not by resizing the image."""
        flipped = self.predict([F.horizontal_flip(image) for image in images], batch_size=batch_size)
        for prediction in flipped:
            prediction.boxes[:, [0, 2]] = prediction.width - prediction.boxes[:, [2, 0]]
        transform = self.model.transform
        original_sizes = (transform.min_size, transform.max_size)
        try:
            transform.min_size = tuple(int(size * rescale) for size in transform.min_size)
            transform.max_size = int(transform.max_size * rescale)
            rescaled = self.predict(images, batch_size=batch_size)
        finally:
            transform.min_size, transform.max_size = original_sizes
        return [list(views) for views in zip(flipped, rescaled, strict=True)]

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image], *, batch_size: int = 8) -> np.ndarray:
        """One vector per image: the coarsest FPN map of the backbone, averaged over space.

        What the detector itself sees, so near-copies of one radiograph land close together; used
        for diverse batch selection and FiftyOne's embedding views (no download needed)."""
        vectors = []
        for start in range(0, len(images), batch_size):
            tensors = [self._tensor(image) for image in images[start : start + batch_size]]
            batch, _ = self.model.transform(tensors)
            features = self.model.backbone(batch.tensors)
            coarsest = [key for key in features if key != "pool"][-1]
            vectors.append(features[coarsest].float().mean(dim=(2, 3)).cpu().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, self.model.backbone.out_channels))

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True).to(self.device)

    def _to_prediction(self, image: Image.Image, output: dict[str, torch.Tensor]) -> ImagePrediction:
        labels = output["labels"].cpu().tolist()
        return ImagePrediction(
            width=image.width,
            height=image.height,
            boxes=output["boxes"].float().cpu().numpy(),
            scores=output["scores"].float().cpu().numpy(),
            class_names=[self.config.class_names[label - 1] for label in labels],
            calibration=self.calibration,
        )
