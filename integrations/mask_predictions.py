"""Mask and fracture / no fracture pre-annotations for a batch of Label Studio tasks: the
segmenter's mask as brush or polygon regions, the X-ray's call as a choice.

The call comes from the classifier when one is served, else from the segmenter's highest pixel
probability, else from the detector's fracture probability (the noisy-OR of its box scores; the
derived image-level classifiers of the study), so a Choices control is answered by whatever the
deployment has. The scoring jobs also measure, per X-ray, the segmenter's mask uncertainty the
review queue ranks by.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from fracture_al.detection.images import ImageLoadError, load_image
from fracture_al.detection.mask_predictor import MaskPrediction, MaskPredictor
from fracture_al.detection.predictor import Predictor
from fracture_al.integrations.image_source import ImageFetchError, ImageSource, LabelStudioConnection, redact_url
from fracture_al.integrations.label_config import ChoiceTarget, MaskTarget
from fracture_al.integrations.mask_regions import brush_region, choice_region, polygon_regions
from fracture_al.integrations.task_predictions import TaskPrediction
from fracture_al.sampling.queue import TaskSignals
from fracture_al.sampling.uncertainty import mask_uncertainty

log = logging.getLogger(__name__)
CALL_THRESHOLD = 0.5  # an X-ray (or a pixel) at or above this probability is called fracture


@dataclass
class MaskTaskPredictor:
    image_source: ImageSource
    batch_size: int = 8
    # Measuring disagreement under a horizontal flip costs one more pass per image.
    with_tta: bool = False

    def predict(
        self,
        tasks: list[dict[str, Any]],
        targets: Sequence[MaskTarget],
        choice: ChoiceTarget | None,
        connection: LabelStudioConnection | None,
        *,
        segmenter: MaskPredictor | None,
        classifier: MaskPredictor | None,
        detector: Predictor | None,
        image_scores: Sequence[float] | None = None,
        measure: bool = False,
    ) -> list[TaskPrediction]:
        """One prediction per task, in order; a task whose image cannot be had gets an empty one.
        ``image_scores``: the detector's per task, when it already ran on them (for the call); with
        ``measure``, also the segmenter's signals the review queue ranks by."""
        if measure and segmenter is None:
            raise ValueError("measuring the review queue's signals of masks needs a segmentation model")
        value_key = targets[0].value_key if targets else choice.value_key if choice else "image"
        images = [self._image(task, value_key, connection) for task in tasks]
        readable = [image for image in images if isinstance(image, Image.Image)]
        masks, calls = self._by_image(segmenter, readable), self._by_image(classifier, readable)
        needs_detector = choice is not None and not (segmenter or classifier) and image_scores is None
        boxes = self._by_image(detector if needs_detector else None, readable)
        measured = self._measure(segmenter, readable, masks) if measure else {}
        version = "+".join(model.version for model in (segmenter, classifier) if model is not None) or (
            detector.version if detector is not None else "")  # fmt: skip
        results = []
        for index, (task, image) in enumerate(zip(tasks, images, strict=True)):
            if isinstance(image, str):
                log.warning("task %s: no mask prediction: %s", task.get("id"), image)
                results.append(TaskPrediction(task.get("id"), version, 0.0, [], error=image))
                continue
            masked, called = masks.get(id(image)), calls.get(id(image))
            if called or masked:
                probability = (called or masked).probability
            else:
                probability = image_scores[index] if image_scores is not None else boxes[id(image)].image_score
            regions = self._mask_regions(masked, targets) + self._choice_regions(probability, choice, image)
            signals = replace(measured[id(image)], task_id=task.get("id")) if measure else None
            results.append(TaskPrediction(task.get("id"), version, probability, regions, signals=signals))
        return results

    def _measure(self, segmenter: MaskPredictor, images: list[Image.Image],
                 masks: dict[int, MaskPrediction]) -> dict[int, TaskSignals]:  # fmt: skip
        """Each image's mask uncertainty (by the image object's id), with the map predicted on the
        mirrored X-ray and mirrored back when test-time augmentation is on."""
        mirrored = segmenter.predict([ImageOps.mirror(image) for image in images], batch_size=self.batch_size) \
            if self.with_tta and images else [None] * len(images)  # fmt: skip
        measured = {}
        for image, flipped in zip(images, mirrored, strict=True):
            back = np.fliplr(flipped.probabilities) if flipped is not None else None
            value = mask_uncertainty(masks[id(image)].probabilities, back, threshold=CALL_THRESHOLD)
            measured[id(image)] = TaskSignals(0, None, None, None, mask_uncertainty=value)
        return measured

    def _by_image(self, model: MaskPredictor | Predictor | None, images: list[Image.Image]) -> dict[int, Any]:
        """The model's prediction per image (by the image object's id); nothing without a model."""
        if model is None or not images:
            return {}
        return dict(zip(map(id, images), model.predict(images, batch_size=self.batch_size), strict=True))

    @staticmethod
    def _mask_regions(prediction: MaskPrediction | None, targets: Sequence[MaskTarget]) -> list[dict[str, Any]]:
        mask = prediction.mask(CALL_THRESHOLD) if prediction is not None else None
        if mask is None or not mask.any():
            return []
        regions = []
        for target in targets:
            if target.kind == "brush":
                regions.append(brush_region(mask, target, prediction.probability))
            else:
                regions.extend(polygon_regions(mask, target, prediction.probability))
        return regions

    @staticmethod
    def _choice_regions(probability: float, choice: ChoiceTarget | None, image: Image.Image) -> list[dict[str, Any]]:
        region = choice_region(probability, choice, CALL_THRESHOLD, image.width, image.height) if choice else None
        return [region] if region is not None else []

    def _image(self, task: dict[str, Any], value_key: str, connection: LabelStudioConnection | None):
        """The task's X-ray, or why there is none."""
        reference = (task.get("data") or {}).get(value_key)
        try:
            return load_image(self.image_source.fetch(reference, connection), name=redact_url(str(reference)))
        except (ImageFetchError, ImageLoadError) as error:
            return str(error)
