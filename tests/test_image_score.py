"""The X-ray's fracture probability from its box scores: cases whose answer is known on paper."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fracture_al.detection.image_score import fracture_probability

box_scores = st.lists(st.floats(0.0, 1.0), max_size=30)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([], 0.0),
        ([0.3], 0.3),
        ([0.5, 0.5], 0.75),  # either of two coin flips
        ([0.2, 0.5, 0.0], 1 - 0.8 * 0.5),
        ([0.4, 1.0], 1.0),  # one certain box settles it
        ([1e-12] * 1000, 1e-9),  # exact where 1 - (1 - p)^n in floats is off by 2e-5 of it
    ],
)
def test_known_probabilities(scores: list[float], expected: float) -> None:
    assert fracture_probability(np.array(scores)) == pytest.approx(expected, rel=1e-6)


@given(box_scores)
def test_probability_lies_between_the_best_box_and_one(scores: list[float]) -> None:
    probability = fracture_probability(scores)
    assert max(scores, default=0.0) - 1e-12 <= probability <= 1.0


@given(box_scores, st.floats(0.0, 1.0))
def test_another_box_never_lowers_the_probability(scores: list[float], extra: float) -> None:
    assert fracture_probability([*scores, extra]) >= fracture_probability(scores) - 1e-12


@given(box_scores)
def test_order_of_boxes_does_not_matter(scores: list[float]) -> None:
    assert fracture_probability(scores[::-1]) == pytest.approx(fracture_probability(scores), abs=1e-12)
