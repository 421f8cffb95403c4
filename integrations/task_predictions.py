"""Label Studio predictions for a list of tasks: fetch each image, run the detector in batches,
convert boxes to regions. One result per task, in order, whatever goes wrong with single images.

Used by the backend's ``/predict`` and by the workers that refresh a whole project's predictions."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any, Protocol

from PIL import Image

from fracture_al.detection.images import ImageLoadError, load_image
from fracture_al.detection.predictor import ImagePrediction, Predictor
from fracture_al.integrations.image_source import ImageFetchError, ImageSource, LabelStudioConnection, redact_url
from fracture_al.integrations.label_config import RectangleTarget, rectangle_target
from fracture_al.integrations.regions import prediction_regions
from fracture_al.sampling.queue import TaskSignals
from fracture_al.sampling.uncertainty import cald_consistency, localization_instability

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPrediction:
    task_id: Any
    model_version: str
    score: float  # the X-ray's fracture probability from all its boxes, before any display threshold
    regions: list[dict[str, Any]]
    error: str | None = None  # why the task has no prediction (image missing, refused, corrupt)
    signals: TaskSignals | None = None  # what the review queue ranks by, when asked for

    def to_label_studio(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "score": self.score, "result": self.regions}


class PredictionCache(Protocol):
    """Predictions already made, by model version and image SHA-256 (worker/scored_cache.py)."""

    def get_many(self, model_version: str, digests: Iterable[str]) -> dict[str, ImagePrediction]: ...

    def put_many(self, model_version: str, predictions: Mapping[str, ImagePrediction]) -> None: ...


@dataclass
class TaskPredictor:
    image_source: ImageSource
    default_threshold: float | None  # the deployment's; None = each model version's calibrated one
    batch_size: int
    # Localisation stability under test-time augmentation costs two more passes per image.
    with_tta: bool
    fetch_pool: ThreadPoolExecutor
    # Inference runs one request at a time: parallel forward passes only fight over the cores.
    inference_lock: threading.Lock
    cache: PredictionCache | None = None

    @classmethod
    def create(
        cls,
        image_source: ImageSource,
        *,
        default_threshold: float | None,
        batch_size: int,
        with_tta: bool,
        cache: PredictionCache | None = None,
    ) -> TaskPredictor:
        return cls(
            image_source=image_source,
            default_threshold=default_threshold,
            batch_size=batch_size,
            with_tta=with_tta,
            fetch_pool=ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch"),
            inference_lock=threading.Lock(),
            cache=cache,
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
        """One prediction per task; with ``measure``, also the signals the review queue ranks by.

        Images are known by the SHA-256 of their bytes: one the served version already predicted
        (in the cache) is answered without decoding it, identical images are predicted once, and
        what the model predicts goes into the cache. Measuring reads nothing from the cache: it
        needs every image through the model."""
        target = rectangle_target(label_config, tuple(predictor.config.class_names))
        threshold = display_threshold(target.score_threshold, self.default_threshold, predictor.operating_threshold)
        fetched = list(self.fetch_pool.map(lambda task: self._fetch(task, target, connection), tasks))
        digests = {item.digest: item for item in fetched if item.digest is not None}  # one per distinct image
        known = {} if measure or self.cache is None else self.cache.get_many(predictor.version, digests)
        unknown = [item for digest, item in digests.items() if digest not in known]
        decoded = dict(zip([item.digest for item in unknown], self.fetch_pool.map(_decode, unknown), strict=True))
        images = {digest: image for digest, image in decoded.items() if not isinstance(image, str)}
        with self.inference_lock:
            predicted = dict(zip(images, predictor.predict(list(images.values()), batch_size=self.batch_size),
                                 strict=True))  # fmt: skip
            measured: dict[str, TaskSignals] = {}
            if measure:
                signals = measure_signals(list(images), predictor, list(images.values()), list(predicted.values()),
                                          with_tta=self.with_tta, batch_size=self.batch_size)  # fmt: skip
                measured = dict(zip(images, signals, strict=True))
        if self.cache is not None:
            self.cache.put_many(predictor.version, predicted)
        answers = {**known, **predicted}
        return [self._result(task, item, answers, decoded, measured, target, threshold, predictor.version)
                for task, item in zip(tasks, fetched, strict=True)]  # fmt: skip

    def _result(
        self,
        task: dict[str, Any],
        item: _Fetched,
        answers: dict[str, ImagePrediction],
        decoded: dict[str, Image.Image | str],
        measured: dict[str, TaskSignals],
        target: RectangleTarget,
        threshold: float,
        version: str,
    ) -> TaskPrediction:
        error = item.error or (decoded.get(item.digest) if isinstance(decoded.get(item.digest), str) else None)
        if error is not None:
            log.warning("task %s: no prediction: %s", task.get("id"), error)
            return TaskPrediction(task.get("id"), version, 0.0, [], error=error)
        prediction = answers[item.digest]
        regions = prediction_regions(
            prediction.boxes,
            prediction.scores,
            prediction.class_names,
            width=prediction.width,
            height=prediction.height,
            target=target,
            threshold=threshold,
        )
        signals = measured.get(item.digest)
        if signals is not None:
            signals = replace(signals, task_id=task.get("id"))
        return TaskPrediction(task.get("id"), version, prediction.image_score, regions, signals=signals)

    def _fetch(
        self, task: dict[str, Any], target: RectangleTarget, connection: LabelStudioConnection | None
    ) -> _Fetched:
        """The task image's bytes, or the reason it has none."""
        reference = (task.get("data") or {}).get(target.value_key)
        try:
            data = self.image_source.fetch(reference, connection)
        except ImageFetchError as error:
            return _Fetched(redact_url(str(reference)), error=str(error))
        return _Fetched(redact_url(reference), data=data, digest=hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class _Fetched:
    reference: str  # as it may be logged
    data: bytes | None = None
    digest: str | None = None
    error: str | None = None


def _decode(item: _Fetched) -> Image.Image | str:
    """The image, or why it cannot be read."""
    try:
        return load_image(item.data, name=item.reference)
    except ImageLoadError as error:
        return str(error)


# Shown when nothing more specific is known: a model without a calibrated threshold, none configured.
FALLBACK_THRESHOLD = 0.5


def display_threshold(*choices: float | None) -> float:
    """The first threshold given, most specific first: the label config's ``model_score_threshold``,
    the deployment's setting, the model version's calibrated one; else 0.5."""
    return next((choice for choice in choices if choice is not None), FALLBACK_THRESHOLD)


def measure_signals(
    task_ids: list[Any],
    predictor: Predictor,
    images: list[Image.Image],
    predictions: list[ImagePrediction],
    *,
    with_tta: bool,
    batch_size: int = 8,
) -> list[TaskSignals]:
    """What the review queue ranks each image by: its candidate box scores, its fracture
    probability, its backbone embedding and, ``with_tta``, its localisation instability, CALD
    consistency and fracture probability averaged over the views (two more passes per image)."""
    embeddings = predictor.embed(images, batch_size=batch_size)
    instabilities: list[float | None] = [None] * len(images)
    consistencies: list[float | None] = [None] * len(images)
    averaged: list[float | None] = [None] * len(images)
    if with_tta:
        views = predictor.predict_augmented(images, batch_size=batch_size)
        pairs = [(p, [(v.boxes, v.scores) for v in augmented]) for p, augmented in zip(predictions, views, strict=True)]
        instabilities = [localization_instability(p.boxes, p.scores, augmented) for p, augmented in pairs]
        consistencies = [cald_consistency(p.boxes, p.scores, augmented) for p, augmented in pairs]
        averaged = [fmean([p.image_score, *(v.image_score for v in augmented)])
                    for p, augmented in zip(predictions, views, strict=True)]  # fmt: skip
    measured = zip(task_ids, predictions, instabilities, consistencies, embeddings, averaged, strict=True)
    return [
        TaskSignals(task_id, [float(s) for s in prediction.scores], instability, vector.tolist(), consistency,
                    fracture_probability=prediction.image_score, fracture_probability_tta=mean_probability)
        for task_id, prediction, instability, consistency, vector, mean_probability in measured
    ]
