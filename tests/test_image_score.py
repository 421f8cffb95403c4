"""The X-ray's fracture probability from its box scores: cases whose answer is known on paper."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit, logit

from fracture_al.detection.image_score import ProbabilityCalibration, fracture_probability

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


def simulated(slope: float, intercept: float, size: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities, and truths drawn as if the calibrated probability were
    sigmoid(slope x logit(p) + intercept)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size)
    return p, rng.random(size) < expit(slope * logit(p) + intercept)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (0.5, -0.7), (2.0, 0.5)])
def test_calibration_recovers_how_the_truth_was_drawn(slope: float, intercept: float) -> None:
    fitted = ProbabilityCalibration.fit(*simulated(slope, intercept))
    assert fitted is not None
    assert fitted.slope == pytest.approx(slope, abs=0.1) and fitted.intercept == pytest.approx(intercept, abs=0.1)


def test_platt_s_smoothed_targets_keep_two_x_rays_from_fitting_a_step() -> None:
    # One fractured X-ray at 0.9, one healthy at 0.1: targets 2/3 and 1/3, which two parameters
    # meet exactly: slope ln 2 / ln 9, intercept 0. Hard targets would send the slope to infinity.
    fitted = ProbabilityCalibration.fit([0.9, 0.1], [True, False], min_xrays=2)
    assert fitted is not None
    assert fitted.slope == pytest.approx(np.log(2) / np.log(9), abs=1e-3)
    assert fitted.intercept == pytest.approx(0, abs=1e-3)
    assert fitted(0.9) == pytest.approx(2 / 3, abs=1e-3)


def test_no_calibration_from_too_few_x_rays_one_class_or_scores_that_rank_backwards() -> None:
    from fracture_al.detection.image_score import MIN_CALIBRATION_XRAYS

    p = np.linspace(0.05, 0.95, MIN_CALIBRATION_XRAYS)
    fractured = p >= 0.5
    assert ProbabilityCalibration.fit(p, fractured) is not None
    assert ProbabilityCalibration.fit(p[:-1], fractured[:-1]) is None
    p, fractured = simulated(1.0, 0.0, size=200)
    assert ProbabilityCalibration.fit(p, np.ones_like(fractured)) is None
    assert ProbabilityCalibration.fit(p, np.zeros_like(fractured)) is None
    assert ProbabilityCalibration.fit(p, ~fractured) is None


def test_identity_and_the_stored_form() -> None:
    assert ProbabilityCalibration()(0.3) == 0.3 and ProbabilityCalibration()(0.0) == 0.0
    assert ProbabilityCalibration.from_dict(None) == ProbabilityCalibration()
    calibration = ProbabilityCalibration(0.6, -0.56)
    assert ProbabilityCalibration.from_dict(calibration.to_dict()) == calibration
    assert 0.0 < calibration(0.0) < calibration(1e-3)  # no boxes: the least likely, still a number
    for malformed in ({"slope": "steep", "intercept": 0}, {"slope": 1.0}, {"slope": -1.0, "intercept": 0.0},
                      {"slope": float("nan"), "intercept": 0.0}):  # fmt: skip
        with pytest.raises(ValueError, match="calibration"):
            ProbabilityCalibration.from_dict(malformed)


@given(st.floats(0.01, 5.0), st.floats(-5.0, 5.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_calibration_never_reorders_x_rays(slope: float, intercept: float, first: float, second: float) -> None:
    calibration = ProbabilityCalibration(slope, intercept)
    low, high = sorted((first, second))
    assert 0.0 <= calibration(low) <= calibration(high) <= 1.0
