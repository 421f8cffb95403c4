"""Answers from the scored cache: a task the served version already predicted is answered from the
stored result without running the model, and a new version is never answered from an older one's."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import redis

from fracture_al.backend.app import create_app
from fracture_al.detection.predictor import ImagePrediction
from fracture_al.detection.store import ModelStore
from fracture_al.settings import Settings
from fracture_al.worker.scored_cache import ScoredPredictions

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_score_threshold="0"><Label value="fracture"/></RectangleLabels>
</View>"""


@pytest.fixture()
def home(trained_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained_home / "models", copy / "models")
    return copy


def test_a_scored_image_is_answered_from_the_cache_and_a_new_version_is_not(
    home: Path, sample_dir: Path, tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((sample_dir / "images").glob("*.jpg"))[0]
    shutil.copy(source, images / "xray.jpg")
    shutil.copy(source, images / "same-pixels-other-name.jpg")
    settings = Settings(
        home=home, device="cpu", local_image_root=images, redis_url=redis_url, queue_prefix=queue_prefix
    )
    client = create_app(settings, event_sink=lambda event: {"status": "ignored"}).test_client()

    def predict(name: str) -> dict:
        reply = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": name}}], "label_config": CONFIG})
        assert reply.status_code == 200
        return reply.json

    modelled = predict("xray.jpg")
    assert modelled["results"][0]["result"]  # the fixture's model keeps every candidate box
    cache = ScoredPredictions(lambda: redis.Redis.from_url(redis_url), queue_prefix)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert set(cache.get_many("v0001", [digest])) == {digest}  # what the model predicted was kept

    # A prediction no model made: if it comes back, the answer came from the cache, not the model.
    width, height = (
        modelled["results"][0]["result"][0]["original_width"],
        modelled["results"][0]["result"][0]["original_height"],
    )
    planted = ImagePrediction(width, height, np.array([[10.0, 20.0, 110.0, 220.0]]), np.array([0.777]), ["fracture"])
    cache.put_many("v0001", {digest: planted})
    answered = predict("same-pixels-other-name.jpg")["results"][0]  # keyed by content, not by name
    assert answered["model_version"] == "v0001" and answered["score"] == pytest.approx(0.777)
    (region,) = answered["result"]
    assert region["value"]["x"] == pytest.approx(100 * 10 / width)

    store = ModelStore(home / "models")
    with store.stage() as staged:
        shutil.copytree(store.get("v0001").path, staged, dirs_exist_ok=True)
        store.publish(staged)
    renewed = predict("xray.jpg")["results"][0]
    assert renewed["model_version"] == "v0002"
    assert renewed["score"] == pytest.approx(modelled["results"][0]["score"], abs=1e-4)  # the model ran again
    assert len(renewed["result"]) == len(modelled["results"][0]["result"])
