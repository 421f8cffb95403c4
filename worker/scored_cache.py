"""Predictions already made, kept in Redis by model version and image content, so that Label
Studio's "Retrieve predictions" over tasks the workers scored is answered without the model.

Keyed by the SHA-256 of the image's bytes as fetched (what both the scoring workers and the
backend see), never by task id or URL: a task whose image changed is predicted again, and a new
model version has keys of its own, so it is never answered from an older version's results.
Redis being away is a cache miss, never an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from redis import Redis

from fracture_al.detection.image_score import ProbabilityCalibration
from fracture_al.detection.predictor import ImagePrediction
from fracture_al.worker.connection import REDIS_TROUBLE

log = logging.getLogger(__name__)

# A version's entries outlive any project's use of it; a new version's scoring writes its own.
ENTRY_DAYS = 30


def encode(prediction: ImagePrediction) -> str:
    return json.dumps({
        "width": prediction.width, "height": prediction.height, "boxes": prediction.boxes.tolist(),
        "scores": prediction.scores.tolist(), "class_names": prediction.class_names,
        "calibration": prediction.calibration.to_dict(),
    })  # fmt: skip


def decode(text: bytes | str) -> ImagePrediction:
    record = json.loads(text)
    return ImagePrediction(
        width=record["width"],
        height=record["height"],
        boxes=np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4),
        scores=np.asarray(record["scores"], dtype=np.float32),
        class_names=list(record["class_names"]),
        # Entries written before versions had a calibration have none: the identity.
        calibration=ProbabilityCalibration.from_dict(record.get("calibration")),
    )


class ScoredPredictions:
    def __init__(self, connect: Callable[[], Redis], prefix: str):
        self._connect = connect
        self._connection: Redis | None = None
        self.prefix = prefix

    def key(self, model_version: str) -> str:
        return f"{self.prefix}:scored:{model_version}"

    def get_many(self, model_version: str, digests: Iterable[str]) -> dict[str, ImagePrediction]:
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        try:
            found = self._redis().hmget(self.key(model_version), wanted)
        except REDIS_TROUBLE as error:
            self._connection = None
            log.warning("scored predictions unavailable, Redis unreachable (%s)", type(error).__name__)
            return {}
        return {digest: decode(text) for digest, text in zip(wanted, found, strict=True) if text is not None}

    def put_many(self, model_version: str, predictions: Mapping[str, ImagePrediction]) -> None:
        if not predictions:
            return
        key = self.key(model_version)
        try:
            with self._redis().pipeline() as pipe:
                pipe.hset(key, mapping={digest: encode(p) for digest, p in predictions.items()})
                pipe.expire(key, ENTRY_DAYS * 86400)
                pipe.execute()
        except REDIS_TROUBLE as error:
            self._connection = None
            log.warning("scored predictions not kept, Redis unreachable (%s)", type(error).__name__)

    def _redis(self) -> Redis:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection
