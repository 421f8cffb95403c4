"""Predictions under test-time augmentation and backbone embeddings, with the fixture model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import ModelStore


@pytest.fixture(scope="module")
def predictor(trained_home: Path) -> Predictor:
    return Predictor.from_version(ModelStore(trained_home / "models").current(), torch.device("cpu"))


def sample(sample_dir: Path, index: int) -> Image.Image:
    return Image.open(sorted((sample_dir / "images").glob("*.jpg"))[index]).convert("RGB")


def test_augmented_views_map_boxes_back_onto_the_original_pixels(predictor: Predictor, sample_dir: Path) -> None:
    half = sample(sample_dir, 0)
    symmetric = Image.new("RGB", (2 * half.width, half.height))
    symmetric.paste(half, (0, 0))
    symmetric.paste(ImageOps.mirror(half), (half.width, 0))  # flipping it changes no pixel

    original = predictor.predict([symmetric])[0]
    flipped, rescaled = predictor.predict_augmented([symmetric])[0]
    assert len(original.boxes)
    # The flipped view is the very same pixels, so the model sees the same input; mapped back onto
    # the original, its boxes must be the original boxes mirrored about the vertical axis.
    mirrored = original.boxes.copy()
    mirrored[:, [0, 2]] = symmetric.width - original.boxes[:, [2, 0]]
    np.testing.assert_allclose(flipped.boxes, mirrored, atol=1e-3)
    np.testing.assert_allclose(flipped.scores, original.scores, atol=1e-6)
    for view in (flipped, rescaled):
        assert (view.boxes[:, 0] < view.boxes[:, 2]).all()
        assert view.boxes[:, 2].max() <= symmetric.width + 1e-3 and view.boxes.min() >= 0
    assert predictor.model.transform.min_size == (predictor.config.min_size,)  # restored after the pass


def test_embeddings_put_a_near_copy_closer_than_another_x_ray(predictor: Predictor, sample_dir: Path) -> None:
    first, other = sample(sample_dir, 1), sample(sample_dir, 30)
    copy = ImageEnhance.Brightness(first).enhance(1.1)
    vectors = predictor.embed([first, copy, other])
    assert vectors.shape == (3, predictor.model.backbone.out_channels)
    assert np.linalg.norm(vectors[0] - vectors[1]) < np.linalg.norm(vectors[0] - vectors[2])
