"""Metrics on hand-built cases whose right answers are known on paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fracture_al.detection.data import CocoFile
from fracture_al.detection.evaluation import evaluate_predictions, metrics_with_intervals

# Four 100x100 X-rays: two with one fracture each, two without.
TRUTH = {1: [10, 10, 50, 50], 2: [20, 30, 60, 70]}


@pytest.fixture()
def coco(tmp_path: Path) -> CocoFile:
    content = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2, 3, 4)],
        "categories": [{"id": 7, "name": "fracture"}],  # a non-contiguous id, as exports have
        "annotations": [
            {"id": n, "image_id": image_id, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            for n, (image_id, (x1, y1, x2, y2)) in enumerate(TRUTH.items(), start=1)
        ],
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(content))
    return CocoFile(path)


def prediction(image_id: int, boxes: list[list[float]], scores: list[float]) -> dict:
    return {
        "image_id": image_id,
        "boxes": np.array(boxes, dtype=float).reshape(-1, 4),
        "scores": np.array(scores),
        "labels": np.ones(len(scores), dtype=int),
    }


def test_perfect_boxes_score_one(coco: CocoFile) -> None:
    predictions = [prediction(i, [TRUTH[i]], [0.9]) for i in (1, 2)] + [prediction(i, [], []) for i in (3, 4)]
    metrics = evaluate_predictions(coco, predictions)
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP75"] == pytest.approx(1.0)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["auroc"] == pytest.approx(1.0)
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == 1.0 and metrics["accuracy"] == 1.0


def test_loose_boxes_pass_at_50_but_fail_at_75(coco: CocoFile) -> None:
    # Each box is 40x40 shifted 8 px right: IoU = 32*40 / (2*1600 - 32*40) = 0.667.
    shifted = {i: [x1 + 8, y1, x2 + 8, y2] for i, (x1, y1, x2, y2) in TRUTH.items()}
    predictions = [prediction(i, [shifted[i]], [0.8]) for i in (1, 2)]
    metrics = evaluate_predictions(coco, predictions + [prediction(i, [], []) for i in (3, 4)])
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP75"] == pytest.approx(0.0)
    # IoU 0.667 passes the thresholds 0.50 .. 0.65: 4 of the 10 COCO thresholds.
    assert metrics["mAP"] == pytest.approx(0.4)


def test_false_alarm_ranked_first_gives_two_thirds(coco: CocoFile) -> None:
    # Ranked detections: false alarm (0.9, on a healthy X-ray), hit (0.8), hit (0.7).
    # Precision after each hit: 1/2 at recall 0.5, 2/3 at recall 1.0; COCO's interpolated
    # precision is 2/3 at every recall level, so AP = 2/3.
    predictions = [
        prediction(3, [[5, 5, 30, 30]], [0.9]),
        prediction(1, [TRUTH[1]], [0.8]),
        prediction(2, [TRUTH[2]], [0.7]),
        prediction(4, [], []),
    ]
    metrics = evaluate_predictions(coco, predictions, image_threshold=0.75)
    assert metrics["mAP50"] == pytest.approx(2 / 3, abs=1e-3)
    # Image level at threshold 0.75: image 1 (0.8) and image 3 (0.9) flagged.
    assert metrics["sensitivity"] == pytest.approx(0.5)
    assert metrics["specificity"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)
    # Scores: positives 0.8, 0.7; negatives 0.9, 0.0 -> 2 of 4 pairs ordered right.
    assert metrics["auroc"] == pytest.approx(0.5)


def test_no_detections_at_all_is_zero_not_a_crash(coco: CocoFile) -> None:
    metrics = evaluate_predictions(coco, [prediction(i, [], []) for i in (1, 2, 3, 4)])
    assert metrics["mAP50"] == 0.0
    assert metrics["sensitivity"] == 0.0


def test_only_healthy_images_leave_ap_undefined(coco: CocoFile) -> None:
    metrics = evaluate_predictions(coco, [prediction(3, [[1, 1, 9, 9]], [0.4]), prediction(4, [], [])])
    assert metrics["mAP50"] is None
    assert metrics["auroc"] is None
    assert metrics["specificity"] == 1.0


def _matches(image_id: int, boxes: int, scored: list[tuple[float, bool]]):
    from fracture_al.detection.evaluation import ImageMatches

    scores = np.array([s for s, _ in scored], dtype=float)
    return ImageMatches(image_id, boxes, scores, np.array([m for _, m in scored], dtype=bool))


def test_operating_threshold_maximises_box_f1() -> None:
    from fracture_al.detection.evaluation import operating_threshold

    images = [
        _matches(1, 1, [(0.9, True)]),
        _matches(2, 1, [(0.4, True), (0.3, False)]),
        _matches(3, 0, [(0.6, False)]),  # a healthy X-ray's false box
    ]
    # Thresholds 0.9 / 0.6 / 0.4 / 0.3 give F1 2/3, 1/2, 4/5, 2/3: 0.4 shows both fractures, one false box.
    assert operating_threshold(images) == pytest.approx(0.4)
    # A threshold cannot split equal scores: a true and a false box both at 0.5 come and go together.
    tied = [_matches(1, 1, [(0.5, True)]), _matches(2, 0, [(0.5, False)]), _matches(3, 1, [(0.2, False)])]
    assert operating_threshold(tied) == pytest.approx(0.5)
    # Equal F1 (2/3) at 0.8 and at 0.4: the higher one (fewer boxes to delete).
    equal = [_matches(1, 2, [(0.8, True), (0.6, False), (0.5, False), (0.4, True)])]
    assert operating_threshold(equal) == pytest.approx(0.8)
    assert operating_threshold([_matches(1, 0, [(0.9, False)])]) is None  # nothing to find
    assert operating_threshold([_matches(1, 1, [(0.9, False)])]) is None  # nothing found
    assert operating_threshold([_matches(1, 1, [(0.01, True)])]) is None  # only under the floor


def test_auroc_ranks_by_all_boxes_while_a_box_is_shown_by_its_own_score(coco: CocoFile) -> None:
    # Fractured X-rays 1 and 2 carry two moderate boxes each (fracture probability 1 - 0.6^2 =
    # 0.64); healthy X-ray 3 one box at 0.55, X-ray 4 none. By the best box alone the healthy 0.55
    # would outrank both fractures (AUROC 0.5); by all boxes every fracture ranks first.
    predictions = [
        prediction(1, [TRUTH[1], [70, 70, 90, 90]], [0.4, 0.4]),
        prediction(2, [TRUTH[2], [70, 5, 95, 25]], [0.4, 0.4]),
        prediction(3, [[5, 5, 30, 30]], [0.55]),
        prediction(4, [], []),
    ]
    metrics = evaluate_predictions(coco, predictions, image_threshold=0.6)
    assert metrics["auroc"] == pytest.approx(1.0)
    # The call at probability 0.6 flags both fractures (0.64) and neither healthy X-ray.
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == 1.0
    # At display threshold 0.5 no fracture is shown a box, and the healthy X-ray 3 is.
    intervals = metrics_with_intervals(coco, predictions, threshold=0.5, resamples=50)
    assert intervals["sensitivity"]["value"] == 0.0 and intervals["specificity"]["value"] == 0.5
    assert intervals["auroc"]["value"] == pytest.approx(1.0)


def test_brier_calibration_error_and_call_accuracy_on_known_probabilities() -> None:
    from fracture_al.detection.evaluation import brier_of, calibration_error_of, call_accuracy_of
    from fracture_al.detection.image_score import ProbabilityCalibration

    # Four X-rays, fracture probabilities 0.9, 0.6, 0.6, 0.1; the first two fractured.
    images = [_matches(1, 1, [(0.9, True)]), _matches(2, 1, [(0.6, True)]), _matches(3, 0, [(0.6, False)]),
              _matches(4, 0, [(0.1, False)])]  # fmt: skip
    assert brier_of(images) == pytest.approx((0.1**2 + 0.4**2 + 0.6**2 + 0.1**2) / 4)
    # Bins: 0.9 (right by 0.1), the two 0.6s (mean 0.6, half fractured: off by 0.1), 0.1 (off by 0.1).
    assert calibration_error_of(images) == pytest.approx(0.1)
    assert call_accuracy_of(images) == pytest.approx(0.75)  # the healthy X-ray at 0.6 is called fractured
    # Pushed towards one half (slope 1/2), the 0.6s fall under 0.5 and the fractured one at 0.6 is missed.
    shrunk = ProbabilityCalibration(slope=0.5, intercept=-0.3)
    assert call_accuracy_of(images, shrunk) == pytest.approx(0.75)
    assert shrunk(0.6) < 0.5 < shrunk(0.9)
    assert brier_of([]) is None and calibration_error_of([]) is None and call_accuracy_of([]) is None


def test_a_split_s_metrics_carry_the_calibration_fitted_to_it(tmp_path: Path) -> None:
    from fracture_al.detection.image_score import MIN_CALIBRATION_XRAYS, ProbabilityCalibration

    # Overconfident: of every six X-rays, a healthy one scores 0.8 and a fractured one 0.3.
    pattern = [(0.95, True), (0.9, True), (0.3, True), (0.8, False), (0.2, False), (0.1, False)]
    xrays = [pattern[i % len(pattern)] for i in range(MIN_CALIBRATION_XRAYS)]
    coco_file = tmp_path / "val.json"
    coco_file.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, len(xrays) + 1)],
        "categories": [{"id": 1, "name": "fracture"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
                        for i, (_, fractured) in enumerate(xrays, 1) if fractured],
    }))  # fmt: skip
    predictions = [{"image_id": i, "boxes": [[10, 10, 30, 30]], "scores": [p], "labels": [1]}
                   for i, (p, _) in enumerate(xrays, 1)]  # fmt: skip
    metrics = evaluate_predictions(CocoFile(coco_file), predictions)
    expected = ProbabilityCalibration.fit([p for p, _ in xrays], [fractured for _, fractured in xrays])
    assert expected is not None and metrics["probability_calibration"] == expected.to_dict()
    assert 0 < metrics["probability_calibration"]["slope"] < 1  # overconfident: probabilities pulled in
    assert evaluate_predictions(CocoFile(coco_file), predictions[:-1])["probability_calibration"] is None  # too few
    only_fractured = [p for p, (_, fractured) in zip(predictions, xrays, strict=True) if fractured]
    assert evaluate_predictions(CocoFile(coco_file), only_fractured)["probability_calibration"] is None
    # Scored with a calibration fitted elsewhere (the version's, on its test set): the call is the
    # served one, on the calibrated probability, and nothing is fitted here.
    shifted = ProbabilityCalibration(slope=1.0, intercept=-1.5)  # 0.8 -> 0.47, 0.9 -> 0.67
    raw, served = metrics, evaluate_predictions(CocoFile(coco_file), predictions, calibration=shifted)
    assert raw["sensitivity"] == pytest.approx(2 / 3) and raw["specificity"] == pytest.approx(2 / 3)
    assert served["sensitivity"] == pytest.approx(2 / 3) and served["specificity"] == pytest.approx(1.0)
    assert served["auroc"] == pytest.approx(raw["auroc"]) and served["probability_calibration"] == shifted.to_dict()
