"""Answering Label Studio's ``/predict``: one result per task, in order, whatever goes wrong."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from detection.images import ImageLoadError, load_image
from detection.predictor import Predictor
from integrations.image_source import ImageFetchError, ImageSource, LabelStudioConnection
from integrations.label_config import RectangleTarget, rectangle_target
from integrations.regions import prediction_regions

log = logging.getLogger(__name__)


@dataclass
class PredictionService:
    image_source: ImageSource
    default_threshold: float
    batch_size: int
    fetch_pool: ThreadPoolExecutor
    # Inference runs one request at a time: parallel forward passes only fight over the cores.
    inference_lock: threading.Lock

    def predict(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        predictor: Predictor,
        connection: LabelStudioConnection | None,
    ) -> list[dict[str, Any]]:
        target = rectangle_target(label_config, tuple(predictor.config.class_names))
        threshold = target.score_threshold if target.score_threshold is not None else self.default_threshold
        images = list(self.fetch_pool.map(lambda task: self._load(task, target, connection), tasks))
        loaded = [image for image in images if image is not None]
        with self.inference_lock:
            predictions = iter(predictor.predict(loaded, batch_size=self.batch_size))
        results = []
        for image in images:
            if image is None:
                results.append({"model_version": predictor.version, "score": 0.0, "result": []})
                continue
            prediction = next(predictions)
            regions = prediction_regions(
                prediction.boxes,
                prediction.scores,
                prediction.class_names,
                width=prediction.width,
                height=prediction.height,
                target=target,
                threshold=threshold,
            )
            results.append({"model_version": predictor.version, "score": prediction.image_score, "result": regions})
        return results

    def _load(
        self, task: dict[str, Any], target: RectangleTarget, connection: LabelStudioConnection | None
    ) -> Image.Image | None:
        task_id = task.get("id")
        reference = (task.get("data") or {}).get(target.value_key)
        try:
            return load_image(self.image_source.fetch(reference, connection), name=str(reference))
        except (ImageFetchError, ImageLoadError) as error:
            log.warning("task %s: no prediction: %s", task_id, error)
            return None
