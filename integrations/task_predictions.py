"""Label Studio predictions for a list of tasks: fetch each image, run the detector in batches,
convert boxes to regions. One result per task, in order, whatever goes wrong with single images.

Used by the backend's ``/predict`` and by the workers that refresh a whole project's predictions."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from detection.images import ImageLoadError, load_image
from detection.predictor import ImagePrediction, Predictor
from fracture_al.settings import Settings
from integrations.image_source import ImageFetchError, ImageSource, LabelStudioConnection
from integrations.label_config import RectangleTarget, rectangle_target
from integrations.regions import prediction_regions
from sampling.queue import TaskSignals
from sampling.uncertainty import localization_instability

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPrediction:
    task_id: Any
    model_version: str
    score: float  # the image score: the best box's score, before any display threshold
    regions: list[dict[str, Any]]
    error: str | None = None  # why the task has no prediction (image missing, refused, corrupt)
    signals: TaskSignals | None = None  # what the review queue ranks by, when asked for

    def to_label_studio(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "score": self.score, "result": self.regions}


@dataclass
class TaskPredictor:
    image_source: ImageSource
    default_threshold: float
    batch_size: int
    # Localisation stability under test-time augmentation costs two more passes per image.
    with_tta: bool
    fetch_pool: ThreadPoolExecutor
    # Inference runs one request at a time: parallel forward passes only fight over the cores.
    inference_lock: threading.Lock

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskPredictor:
        return cls(
            image_source=ImageSource.from_settings(settings),
            default_threshold=settings.predict_score_threshold,
            batch_size=settings.predict_batch_size,
            with_tta=settings.score_with_tta,
            fetch_pool=ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch"),
            inference_lock=threading.Lock(),
        )

    def predict(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        predictor: Predictor,
        connection: LabelStudioConnection | None,
        *,
        measure: bool = False,
    ) -> list[TaskPrediction]:
        """One prediction per task; with ``measure``, also the signals the review queue ranks by."""
        target = rectangle_target(label_config, tuple(predictor.config.class_names))
        threshold = target.score_threshold if target.score_threshold is not None else self.default_threshold
        loaded = list(self.fetch_pool.map(lambda task: self._load(task, target, connection), tasks))
        images = [image for image in loaded if not isinstance(image, str)]
        task_ids = [task.get("id") for task, image in zip(tasks, loaded, strict=True) if not isinstance(image, str)]
        with self.inference_lock:
            predicted = predictor.predict(images, batch_size=self.batch_size)
            measured = [None] * len(images)
            if measure:
                measured = measure_signals(
                    task_ids, predictor, images, predicted, with_tta=self.with_tta, batch_size=self.batch_size
                )
        predictions, measurements = iter(predicted), iter(measured)
        results = []
        for task, image in zip(tasks, loaded, strict=True):
            if isinstance(image, str):
                results.append(TaskPrediction(task.get("id"), predictor.version, 0.0, [], error=image))
                continue
            prediction, signals = next(predictions), next(measurements)
            regions = prediction_regions(
                prediction.boxes,
                prediction.scores,
                prediction.class_names,
                width=prediction.width,
                height=prediction.height,
                target=target,
                threshold=threshold,
            )
            results.append(
                TaskPrediction(task.get("id"), predictor.version, prediction.image_score, regions, signals=signals)
            )
        return results

    def _load(
        self, task: dict[str, Any], target: RectangleTarget, connection: LabelStudioConnection | None
    ) -> Image.Image | str:
        """The task's image, or the reason it has none."""
        reference = (task.get("data") or {}).get(target.value_key)
        try:
            return load_image(self.image_source.fetch(reference, connection), name=str(reference))
        except (ImageFetchError, ImageLoadError) as error:
            log.warning("task %s: no prediction: %s", task.get("id"), error)
            return str(error)


def measure_signals(
    task_ids: list[Any],
    predictor: Predictor,
    images: list[Image.Image],
    predictions: list[ImagePrediction],
    *,
    with_tta: bool,
    batch_size: int = 8,
) -> list[TaskSignals]:
    """What the review queue ranks each image by: its candidate box scores, its backbone embedding
    and, ``with_tta``, its localisation instability (two more passes per image)."""
    embeddings = predictor.embed(images, batch_size=batch_size)
    instabilities: list[float | None] = [None] * len(images)
    if with_tta:
        views = predictor.predict_augmented(images, batch_size=batch_size)
        instabilities = [
            localization_instability(p.boxes, p.scores, [(v.boxes, v.scores) for v in augmented])
            for p, augmented in zip(predictions, views, strict=True)
        ]
    measured = zip(task_ids, predictions, instabilities, embeddings, strict=True)
    return [
        TaskSignals(task_id, [float(score) for score in prediction.scores], instability, vector.tolist())
        for task_id, prediction, instability, vector in measured
    ]
