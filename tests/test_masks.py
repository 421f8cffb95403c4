"""Fracture masks and their metrics, on cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fracture_al.detection.mask_metrics import mask_metrics, overlap, score_mask
from fracture_al.detection.masks import mask_to_polygons, polygons_of, polygons_to_mask


def test_a_square_outline_covers_the_pixels_whose_centres_it_encloses() -> None:
    mask = polygons_to_mask([[2, 2, 6, 2, 6, 6, 2, 6]], height=10, width=10)
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:6, 2:6] = True  # pixel (x, y) has its centre at (x + 0.5, y + 0.5)
    assert (mask == expected).all()


def test_a_triangle_leaves_out_the_pixels_whose_centres_sit_on_its_edge() -> None:
    # x + y <= 8 below the hypotenuse: centres with x + y + 1 < 8 are inside, = 8 lie on it.
    mask = polygons_to_mask([[2, 2, 6, 2, 2, 6]], height=8, width=8)
    expected = np.zeros((8, 8), dtype=bool)
    for y in range(8):
        for x in range(8):
            expected[y, x] = x >= 2 and y >= 2 and (x + 0.5) + (y + 0.5) < 8
    assert (mask == expected).all() and mask.sum() == 6


def test_fractures_of_one_x_ray_make_one_mask_and_a_healthy_one_is_empty() -> None:
    two = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 8, 5, 8, 8, 5, 8]], height=10, width=10)
    assert two.sum() == 4 + 9
    assert not polygons_to_mask([], height=4, width=6).any()
    assert polygons_to_mask([], height=4, width=6).shape == (4, 6)


def test_segmentations_as_coco_and_fracatlas_write_them() -> None:
    assert polygons_of([[1, 2, 3, 4, 5, 6]]) == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    assert polygons_of("[[1, 2, 3, 4, 5, 6]]") == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]  # FracAtlas: a string
    assert polygons_of({"counts": "abc", "size": [4, 4]}) == []  # crowd RLE: not an outline
    assert polygons_of([[1, 2, 3, 4]]) == [] and polygons_of("") == []


@pytest.mark.parametrize(
    "shape",
    [
        lambda m: m.__setitem__((slice(2, 6), slice(2, 6)), True),  # a square
        lambda m: (m.__setitem__((slice(1, 9), slice(1, 3)), True), m.__setitem__((slice(7, 9), slice(1, 8)), True)),
        lambda m: (m.__setitem__((slice(0, 3), slice(0, 3)), True), m.__setitem__((slice(6, 10), slice(5, 9)), True)),
    ],
    ids=["square", "L-shape", "two regions, one at the border"],
)
def test_mask_to_polygons_and_back_is_the_same_mask(shape) -> None:
    mask = np.zeros((10, 10), dtype=bool)
    shape(mask)
    polygons = mask_to_polygons(mask, tolerance=0.0)
    assert polygons and all(len(p) >= 6 for p in polygons)
    assert (polygons_to_mask(polygons, 10, 10) == mask).all()


def _masks(*cells: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=bool)
    for y1, y2, x1, x2 in cells:
        mask[y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize(
    ("predicted", "truth", "dice", "jaccard"),
    [
        (_masks((0, 4, 0, 2)), _masks((0, 4, 0, 2)), 1.0, 1.0),  # perfect
        (_masks((0, 4, 0, 2)), _masks((4, 8, 4, 6)), 0.0, 0.0),  # disjoint
        (_masks((0, 4, 0, 2)), _masks((2, 6, 0, 2)), 0.5, 1 / 3),  # half overlap: 4 of 8 and 8 pixels
        (_masks(), _masks(), 1.0, 1.0),  # a healthy X-ray left empty
        (_masks((0, 1, 0, 1)), _masks(), 0.0, 0.0),  # a false mask on a healthy X-ray
        (_masks(), _masks((0, 4, 0, 2)), 0.0, 0.0),  # a missed fracture
    ],
)
def test_dice_and_jaccard_of_built_masks(predicted, truth, dice, jaccard) -> None:
    assert overlap(predicted, truth) == pytest.approx((dice, jaccard))


def test_metrics_over_fractured_and_over_all_x_rays() -> None:
    fracture = _masks((0, 4, 0, 2))
    half = np.where(_masks((2, 6, 0, 2)), 0.6, 0.1)  # half overlap, less sure (ranks under image 4)
    scores = [
        score_mask(1, np.where(fracture, 0.9, 0.1), fracture),  # Dice 1
        score_mask(2, half, fracture),  # Dice 0.5
        score_mask(3, np.full((8, 8), 0.2), _masks()),  # healthy, left empty: Dice 1, image called healthy
        score_mask(4, np.where(_masks((0, 1, 0, 1)), 0.7, 0.0), _masks()),  # healthy, a false pixel: Dice 0
    ]
    metrics = mask_metrics(scores, resamples=200)
    assert metrics["dice_fractured"]["value"] == pytest.approx(0.75)
    assert metrics["dice_all"]["value"] == pytest.approx(0.625)
    assert metrics["jaccard_fractured"]["value"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["sensitivity"]["value"] == 1.0 and metrics["specificity"]["value"] == 0.5
    assert metrics["accuracy"]["value"] == 0.75 and metrics["auroc"]["value"] == pytest.approx(0.75)
    assert metrics["pixel_accuracy"]["value"] == pytest.approx((64 + 56 + 64 + 63) / 256)
    low, high = metrics["dice_all"]["low"], metrics["dice_all"]["high"]
    assert 0.0 <= low <= 0.625 <= high <= 1.0
