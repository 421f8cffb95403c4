"""The retrain gate and the frozen validation set, on cases whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from fracture_al.detection.data import CocoFile
from fracture_al.detection.evaluation import ImageMatches, average_precision, coco_detection_metrics, match_detections
from fracture_al.detection.mask_metrics import MaskScores
from fracture_al.worker.gate import GateRule, mask_gate, quality_gate
from fracture_al.worker.validation import SPLIT_FIELD, held_out_draw, new_assignments, with_assignments

RULE = GateRule(min_images=20, min_fractures=10, resamples=300)


def image(image_id: int, boxes: int, hits: list[float], misses: list[float] = ()) -> ImageMatches:
    """An X-ray with ``boxes`` fractures, true-positive detections scored ``hits`` and false ones ``misses``."""
    scores = np.array([*hits, *misses], dtype=float)
    matched = np.array([True] * len(hits) + [False] * len(misses))
    order = np.argsort(-scores, kind="mergesort")
    return ImageMatches(image_id, boxes, scores[order], matched[order])


def mediocre_set(count: int = 40) -> list[ImageMatches]:
    """Half fractured X-rays, found only some of the time and with confident false alarms."""
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        fractured = i % 2 == 0
        hit = fractured and rng.random() < 0.5
        images.append(image(i, int(fractured), [float(rng.uniform(0.5, 0.9))] if hit else [],
                            [float(rng.uniform(0.3, 0.95))]))  # fmt: skip
    return images


def perfect_set(reference: list[ImageMatches]) -> list[ImageMatches]:
    """Every fracture found with a confident box, no false alarm: the best any model can do."""
    return [image(r.image_id, r.boxes, [0.95] * r.boxes) for r in reference]


def test_two_copies_of_one_model_are_never_better() -> None:
    current = mediocre_set()
    decision = quality_gate(current, list(current), RULE)
    assert not decision.passed
    assert decision.delta_map50["value"] == 0.0 and decision.delta_map50["probability_better"] == 0.0


def test_a_clearly_better_model_passes_with_its_interval_recorded() -> None:
    current = mediocre_set()
    decision = quality_gate(perfect_set(current), current, RULE)
    assert decision.passed, decision.reason
    assert decision.candidate["mAP50"] == pytest.approx(1.0)
    assert 0 < decision.delta_map50["low"] <= decision.delta_map50["value"] <= decision.delta_map50["high"]
    assert "interval" in decision.reason


def test_a_worse_model_is_kept_not_served() -> None:
    current = mediocre_set()
    assert not quality_gate(current, perfect_set(current), RULE).passed


def test_better_boxes_but_fewer_fractured_xrays_flagged_is_refused() -> None:
    # The candidate finds every fracture it finds with a perfect rank (no false alarms) but scores
    # them under the operating threshold, so at 0.5 it flags none of the fractured X-rays.
    current = [image(i, 1, [0.9]) if i % 2 == 0 else image(i, 0, [], [0.95]) for i in range(40)]
    candidate = [image(i, 1, [0.4]) if i % 2 == 0 else image(i, 0, []) for i in range(40)]
    decision = quality_gate(candidate, current, RULE)
    assert decision.candidate["mAP50"] > decision.current["mAP50"]
    assert not decision.passed and "sensitivity" in decision.reason


def test_each_model_is_judged_at_the_threshold_it_is_served_with() -> None:
    # The same candidate, now served at its own calibrated threshold of 0.3, flags every fractured
    # X-ray it found: better boxes and no fewer fractures flagged, so it passes.
    current = [image(i, 1, [0.9]) if i % 2 == 0 else image(i, 0, [], [0.95]) for i in range(40)]
    candidate = [image(i, 1, [0.4]) if i % 2 == 0 else image(i, 0, []) for i in range(40)]
    decision = quality_gate(candidate, current, RULE, candidate_threshold=0.3, current_threshold=0.5)
    assert decision.passed, decision.reason
    assert decision.thresholds == {"candidate": 0.3, "current": 0.5}
    assert decision.candidate["sensitivity"] == decision.current["sensitivity"] == 1.0
    # A deployment that fixes one threshold for all models overrides both.
    fixed = quality_gate(candidate, current, GateRule(min_images=20, min_fractures=10, resamples=300, threshold=0.5),
                         candidate_threshold=0.3, current_threshold=0.5)  # fmt: skip
    assert not fixed.passed and fixed.thresholds == {"candidate": 0.5, "current": 0.5}


def test_a_small_validation_set_keeps_the_candidate_and_says_what_is_missing() -> None:
    small = [image(i, 1 if i < 4 else 0, [0.9] if i < 4 else []) for i in range(12)]
    decision = quality_gate(small, None, RULE)
    assert not decision.passed
    assert decision.needs == {"images": 8, "fractures": 6}
    assert "8 more validation X-rays" in decision.reason and "6 more fractures" in decision.reason
    # ...and it is so even for the very first model, and when there is nothing to validate on.
    assert quality_gate([], None, RULE).needs == {"images": 20, "fractures": 10}


def mask_scores(dice_of_fractured: list[float], called: list[bool], healthy: int = 10) -> list[MaskScores]:
    """Fractured X-rays with these Dice and image-level calls, then healthy ones drawn empty."""
    fractured = [MaskScores(i, True, d, d / (2 - d), 0.99, 0.9 if c else 0.1)
                 for i, (d, c) in enumerate(zip(dice_of_fractured, called, strict=True))]  # fmt: skip
    return fractured + [MaskScores(100 + i, False, 1.0, 1.0, 1.0, 0.1) for i in range(healthy)]


def test_the_mask_gate_serves_a_clearly_better_segmenter_and_never_a_copy() -> None:
    rng = np.random.default_rng(3)
    served = mask_scores(list(rng.uniform(0.1, 0.4, 20)), [True] * 20)
    better = mask_scores([d + 0.3 for d in (s.dice for s in served[:20])], [True] * 20)

    copy = mask_gate(served, served, RULE)
    assert not copy.passed and "below the required gain" in copy.reason
    assert copy.delta_dice["value"] == pytest.approx(0.0)
    decision = mask_gate(better, served, RULE)
    assert decision.passed, decision.reason
    assert decision.delta_dice["value"] == pytest.approx(0.3) and decision.delta_dice["low"] > 0.25
    assert decision.candidate["dice"] == pytest.approx(decision.current["dice"] + 0.3)  # healthy X-rays left out


def test_the_mask_gate_refuses_better_outlines_on_fewer_fractured_x_rays_called() -> None:
    served = mask_scores([0.2] * 20, [True] * 20)
    sharper_but_quieter = mask_scores([0.6] * 20, [True] * 10 + [False] * 10)
    decision = mask_gate(sharper_but_quieter, served, RULE)
    assert not decision.passed and "sensitivity 1.000 -> 0.500" in decision.reason


def test_the_mask_gate_keeps_the_first_segmenter_until_the_validation_set_is_big_enough() -> None:
    small = mask_scores([0.5] * 4, [True] * 4, healthy=6)
    decision = mask_gate(small, None, RULE)
    assert not decision.passed and decision.needs == {"images": 10, "fractures": 6}
    first = mask_gate(mask_scores([0.5] * 10, [True] * 10), None, RULE)
    assert first.passed and "first segmentation model" in first.reason


def test_matches_give_pycocotools_ap50(sample_dir) -> None:
    coco = CocoFile(sample_dir / "val.json")
    rng = np.random.default_rng(0)
    predictions = []
    for record in coco.images:  # each true box jittered a little, plus a random false one
        boxes = [[x1 + rng.uniform(-3, 3), y1, x2, y2 + rng.uniform(-3, 3)] for x1, y1, x2, y2 in record.boxes]
        boxes.append([5, 5, 40, 40])
        scores = rng.uniform(0.1, 1.0, size=len(boxes))
        predictions.append({"image_id": record.image_id, "boxes": np.array(boxes), "scores": scores,
                            "labels": np.ones(len(boxes), dtype=int)})  # fmt: skip
    assert any(record.boxes for record in coco.images)
    expected = coco_detection_metrics(coco, predictions)["mAP50"]
    assert 0 < expected < 1
    assert average_precision(match_detections(coco, predictions)) == pytest.approx(expected, abs=1e-12)


def test_validation_assignment_is_deterministic_of_the_share_and_frozen() -> None:
    tasks = [{"id": task_id, "data": {}} for task_id in range(1, 2001)]
    assigned = new_assignments(tasks, 0.2)
    assert assigned == new_assignments(list(reversed(tasks)), 0.2)  # order and worker do not matter
    share = sum(split == "val" for split in assigned.values()) / len(assigned)
    assert share == pytest.approx(0.2, abs=0.03)
    assert all((split == "val") == (held_out_draw(task_id) < 0.2) for task_id, split in assigned.items())

    labelled = with_assignments(tasks, assigned)
    assert new_assignments(labelled, 0.9) == {}  # a written split is never revisited, whatever the share
    in_validation = next(task for task in labelled if task["data"][SPLIT_FIELD] == "val")
    assert new_assignments([in_validation], 0.0) == {}
    assert new_assignments([{"id": 5, "data": {SPLIT_FIELD: "test"}}], 0.5) == {}
