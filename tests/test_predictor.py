"""Predictions under test-time augmentation and backbone embeddings, with the fixture model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms.v2 import functional as F

from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig, build_mask_model
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.model_files import load_model
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import ModelStore
from fracture_al.detection.tta import detect


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


def test_served_predictions_are_the_saved_model_s_own(predictor: Predictor, trained_home: Path,
                                                    sample_dir: Path) -> None:  # fmt: skip
    """On a CPU the predictor runs the network in channels-last memory (its fastest there); the
    boxes must still be those of the saved network run in PyTorch's default layout."""
    saved, _ = load_model(ModelStore(trained_home / "models").current().weights_path)
    saved.to(memory_format=torch.contiguous_format)
    images = [sample(sample_dir, index) for index in (0, 1, 30)]
    served = predictor.predict(images)
    with torch.inference_mode():
        tensors = [F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True) for image in images]
        plain = detect(saved, tensors, flip_tta=predictor.config.flip_tta)
    assert sum(len(prediction.scores) for prediction in served) > 0
    for prediction, output in zip(served, plain, strict=True):
        np.testing.assert_allclose(prediction.boxes, output["boxes"].numpy(), atol=1e-2)
        np.testing.assert_allclose(prediction.scores, output["scores"].numpy(), atol=1e-4)
    convolutions = [p for p in predictor.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_a_cpu_runs_convnets_in_channels_last_and_transformers_as_they_are(name: str) -> None:
    config = MaskModelConfig(task=ARCHITECTURES[name].task, arch=name)
    model = MaskPredictor(build_mask_model(config, imagenet=False), config, torch.device("cpu"), "untrained").model
    convolutions = [p for p in model.parameters() if p.dim() == 4]
    assert convolutions and not model.training
    # The transformers ran no faster in channels-last (benchmarks/reported/memory_layout_cpu.json).
    layout = torch.contiguous_format if name in ("swin_unetr", "vit") else torch.channels_last
    assert all(p.is_contiguous(memory_format=layout) for p in convolutions)


def test_embeddings_put_a_near_copy_closer_than_another_x_ray(predictor: Predictor, sample_dir: Path) -> None:
    first, other = sample(sample_dir, 1), sample(sample_dir, 30)
    copy = ImageEnhance.Brightness(first).enhance(1.1)
    vectors = predictor.embed([first, copy, other])
    assert vectors.shape == (3, predictor.model.backbone.out_channels)
    assert np.linalg.norm(vectors[0] - vectors[1]) < np.linalg.norm(vectors[0] - vectors[2])


def test_queue_signals_carry_the_fracture_probability_and_its_mean_over_the_tta_views(
    predictor: Predictor, sample_dir: Path
) -> None:
    from fracture_al.integrations.task_predictions import measure_signals

    images = [sample(sample_dir, index) for index in (0, 1)]
    found = predictor.predict(images)
    with_tta = measure_signals([10, 11], predictor, images, found, with_tta=True)
    views = predictor.predict_augmented(images)
    differing = 0
    for signals, prediction, augmented in zip(with_tta, found, views, strict=True):
        assert signals.fracture_probability == prediction.image_score
        three = [prediction.image_score, *(view.image_score for view in augmented)]
        # Relative: the fixture model's probabilities are tiny, so an absolute tolerance would pass anything.
        assert signals.fracture_probability_tta == pytest.approx(sum(three) / 3, rel=1e-9, abs=0)
        differing += signals.fracture_probability_tta != pytest.approx(prediction.image_score, rel=1e-3, abs=0)
    assert differing, "the views agree to 0.1% on every X-ray: the mean would not be told from the original"
    without = measure_signals([10, 11], predictor, images, found, with_tta=False)
    assert [s.fracture_probability_tta for s in without] == [None, None]
