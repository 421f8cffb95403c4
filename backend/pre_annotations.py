"""What the backend answers a labelling config with: boxes from the detector for RectangleLabels,
masks from the segmenter for BrushLabels and PolygonLabels, the X-ray's call for Choices; any
mix of them on one image, each from its task's current model version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fracture_al.backend.served_model import ServedModel
from fracture_al.detection.store import ModelStoreError
from fracture_al.integrations.image_source import LabelStudioConnection
from fracture_al.integrations.label_config import (
    ChoiceTarget,
    LabelConfigError,
    MaskTarget,
    choice_target,
    has_rectangles,
    mask_targets,
)
from fracture_al.integrations.mask_predictions import MaskTaskPredictor
from fracture_al.integrations.task_predictions import TaskPrediction, TaskPredictor


@dataclass(frozen=True)
class Asked:
    """The controls of a labelling config that fracture-al can pre-annotate."""

    boxes: bool
    masks: tuple[MaskTarget, ...]
    choice: ChoiceTarget | None


def asked_by(label_config: str) -> Asked:
    """Raises LabelConfigError for a config that cannot be parsed or asks for nothing fracture-al draws."""
    boxes, masks, choice = has_rectangles(label_config), mask_targets(label_config), choice_target(label_config)
    if not (boxes or masks or choice):
        raise LabelConfigError("labelling config has no RectangleLabels, BrushLabels, PolygonLabels or Choices "
                               "control on an Image for fractures")  # fmt: skip
    return Asked(boxes, masks, choice)


class PreAnnotator:
    def __init__(self, served: Mapping[str, ServedModel], boxes: TaskPredictor, masks: MaskTaskPredictor):
        self.served = served
        self.boxes = boxes
        self.masks = masks

    def _serving(self, asked: Asked) -> dict[str, bool]:
        """Which task's model answers: masks need a segmentation model; the call is the classifier's,
        else the segmenter's, else the detector's."""
        segmenter = bool(asked.masks) and self.served["segmentation"].version is not None
        classifier = asked.choice is not None and self.served["classification"].version is not None
        detector = asked.boxes or (asked.choice is not None and not segmenter and not classifier)
        if not (segmenter or classifier or detector):
            raise ModelStoreError("no segmentation model has been published yet: run "
                                  "`fracture-al train --task segmentation` first")  # fmt: skip
        return {"detection": detector, "segmentation": segmenter, "classification": classifier}

    def version(self, label_config: str) -> str:
        """The model versions that answer this config, e.g. ``v0001`` or ``v0001+v0004``."""
        return self._versions(self._serving(asked_by(label_config)))

    def _versions(self, serving: dict[str, bool]) -> str:
        versions = [self.served[task].version for task, used in serving.items() if used]
        if None in versions:
            raise ModelStoreError("no model has been published yet: run `fracture-al train` first")
        return "+".join(versions)

    def predict(
        self, tasks: list[dict[str, Any]], label_config: str, connection: LabelStudioConnection | None
    ) -> tuple[list[TaskPrediction], str]:
        """One prediction per task, in order, and the model version string they carry."""
        asked = asked_by(label_config)
        serving = self._serving(asked)
        version = self._versions(serving)
        predictors = {task: self.served[task].predictor() for task, used in serving.items() if used}
        detector = predictors.get("detection")
        boxed = self.boxes.predict(tasks, label_config, detector, connection) if asked.boxes else None
        masked = None
        if "segmentation" in predictors or asked.choice is not None:
            masked = self.masks.predict(
                tasks, asked.masks if "segmentation" in predictors else (), asked.choice, connection,
                segmenter=predictors.get("segmentation"), classifier=predictors.get("classification"),
                detector=detector if boxed is None else None, image_scores=[p.score for p in boxed] if boxed else None,
            )  # fmt: skip
        return [_merged(i, boxed, masked, version) for i in range(len(tasks))], version


def _merged(index: int, boxed: list[TaskPrediction] | None, masked: list[TaskPrediction] | None,
            version: str) -> TaskPrediction:  # fmt: skip
    parts = [part[index] for part in (boxed, masked) if part is not None]
    errors = [p.error for p in parts if p.error]
    return TaskPrediction(parts[0].task_id, version, parts[0].score, [r for p in parts for r in p.regions],
                          error=errors[0] if errors else None)  # fmt: skip
