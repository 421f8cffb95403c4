"""Uncertainty scores and batch selection on cases whose right answer is known by construction."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fracture_al.sampling.diversity import k_center_greedy, select_batch
from fracture_al.sampling.uncertainty import (
    binary_entropy,
    box_iou,
    cald_consistency,
    image_entropy,
    image_uncertainty,
    least_confidence,
    localization_instability,
    margin,
)


def test_box_uncertainties_peak_at_one_half_and_vanish_at_certainty() -> None:
    scores = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    for function, peak in ((least_confidence, 0.5), (binary_entropy, 1.0), (margin, 1.0)):
        values = function(scores)
        assert values[2] == pytest.approx(peak)
        assert values[0] == pytest.approx(0.0, abs=1e-9) and values[4] == pytest.approx(0.0, abs=1e-9)
        assert values[1] == pytest.approx(values[3])  # symmetric in p and 1 - p


@pytest.mark.parametrize("method", ["least_confidence", "entropy", "margin"])
def test_mid_score_candidates_make_an_x_ray_uncertain(method: str) -> None:
    confident_fracture = np.array([0.97, 0.02])
    confident_negative = np.array([])  # no candidate box at all
    hesitant = np.array([0.45, 0.4, 0.55])  # no confident box, several mid-score candidates
    ranking = sorted(
        {"fracture": confident_fracture, "negative": confident_negative, "hesitant": hesitant}.items(),
        key=lambda item: -image_uncertainty(item[1], method, "max"),
    )
    assert ranking[0][0] == "hesitant"
    assert image_uncertainty(confident_negative, method) == 0.0


def test_image_entropy_is_the_binary_entropy_of_the_x_rays_fracture_probability() -> None:
    assert image_entropy(0.5) == pytest.approx(1.0)
    # -(0.75 log2 0.75 + 0.25 log2 0.25)
    assert image_entropy(0.75) == pytest.approx(0.8112781, abs=1e-6)
    assert image_entropy(0.25) == pytest.approx(image_entropy(0.75))
    assert image_entropy(0.0) == 0.0 and image_entropy(1.0) == 0.0


def test_image_entropy_adds_up_faint_candidates_that_box_entropy_sees_one_at_a_time() -> None:
    from fracture_al.detection.image_score import fracture_probability

    faint = np.array([0.15, 0.15, 0.15, 0.15])  # fracture probability 1 - 0.85^4 = 0.478: a coin toss
    one_box = np.array([0.7])
    agreeing = np.array([0.6, 0.6, 0.6])  # 0.936: three boxes make the call confident
    assert image_uncertainty(one_box, "entropy") > image_uncertainty(faint, "entropy")
    assert (image_entropy(fracture_probability(faint)) > image_entropy(fracture_probability(one_box))
            > image_entropy(fracture_probability(agreeing)))  # fmt: skip
    assert image_uncertainty(agreeing, "entropy") > image_uncertainty(one_box, "entropy")


def test_aggregations() -> None:
    scores = np.array([0.5, 0.5, 0.99])
    assert image_uncertainty(scores, "margin", "max") == pytest.approx(1.0)
    assert image_uncertainty(scores, "margin", "sum") == pytest.approx(2.02)
    assert image_uncertainty(scores, "margin", "mean") == pytest.approx(2.02 / 3)
    with pytest.raises(ValueError, match="unknown box uncertainty"):
        image_uncertainty(scores, "vibes")


def test_box_iou_of_built_boxes() -> None:
    square = np.array([[0.0, 0.0, 10.0, 10.0]])
    others = np.array([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [2.0, 2.0, 4.0, 4.0]])
    # Half the square shifted: 50 / 150; itself; disjoint; a 2 x 2 box inside: 4 / 100.
    assert box_iou(square, others) == pytest.approx(np.array([[1 / 3, 1.0, 0.0, 0.04]]))
    assert box_iou(others, square).shape == (4, 1) and box_iou(square, np.zeros((0, 4))).shape == (1, 0)


def test_ranking_a_queue_loads_no_torch() -> None:
    """`fracture-al queue` and `report` read and re-rank queues: scoring is arithmetic on numbers,
    and importing torch would add seconds to every such command."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, fracture_al.sampling.queue, fracture_al.sampling.uncertainty; "
         "print([m for m in ('torch', 'torchvision') if m in sys.modules])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert loaded == "[]"


def test_localization_instability() -> None:
    boxes, scores = np.array([[10, 10, 50, 50]]), np.array([0.8])
    stable = [(np.array([[10, 10, 50, 50]]), np.array([0.8]))] * 2
    assert localization_instability(boxes, scores, stable) == pytest.approx(0.0)
    vanished = [(np.zeros((0, 4)), np.zeros(0)), (np.array([[10, 10, 50, 50]]), np.array([0.7]))]
    assert localization_instability(boxes, scores, vanished) == pytest.approx(0.5)
    moved = [(np.array([[30, 10, 70, 50]]), np.array([0.8]))]  # IoU = 800 / 2400 = 1/3
    assert localization_instability(boxes, scores, moved) == pytest.approx(2 / 3)
    assert localization_instability(boxes, np.array([0.05]), moved) == 0.0  # no confident box


def test_k_center_never_takes_a_duplicate_while_anything_else_is_left() -> None:
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(6, 16))
    embeddings = np.concatenate([distinct, distinct[:3], distinct[:3]])  # three copies of three X-rays
    chosen = k_center_greedy(embeddings, 6, first=0)
    assert len({tuple(embeddings[i]) for i in chosen}) == 6


@pytest.mark.parametrize("strategy", ["k_center", "kmeans_pp"])
def test_diverse_batch_skips_near_copies_of_the_most_uncertain_x_ray(strategy: str) -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(40, 8))
    uncertainty = rng.uniform(0.0, 0.5, size=40)
    embeddings[1:5] = embeddings[0]  # four exact copies of X-ray 0 ...
    uncertainty[0:5] = [0.99, 0.98, 0.97, 0.96, 0.95]  # ... all at the top of the uncertainty ranking
    plain = select_batch(uncertainty, embeddings, 5, strategy="uncertainty")
    assert plain == [0, 1, 2, 3, 4]
    diverse = select_batch(uncertainty, embeddings, 5, strategy=strategy, seed=3)
    assert len(diverse) == 5
    assert len({tuple(embeddings[i]) for i in diverse}) == 5  # no two copies of one X-ray
    assert select_batch(uncertainty, embeddings, 5, strategy=strategy, seed=3) == diverse  # reproducible


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        select_batch(np.ones(10), np.ones((10, 2)), 2, strategy="magic")


def test_review_order_puts_the_diverse_batch_first_then_the_rest_by_uncertainty() -> None:
    from fracture_al.sampling.diversity import random_order, review_order

    uncertainty = np.array([0.9, 0.89, 0.1, 0.5, 0.3])
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [9.0, 9.0]])  # 1 copies 0
    order = review_order(uncertainty, embeddings, top_k=2, strategy="k_center")
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert order[0] == 0 and 1 not in order[:2]  # the copy of X-ray 0 waits
    assert order[2:] == sorted(order[2:], key=lambda i: -uncertainty[i])
    assert random_order(5, seed=4) == random_order(5, seed=4) != random_order(5, seed=5)


def _signals(task_id: int, scores: list[float], instability: float | None = None, embedding=None,
             consistency: float | None = None):  # fmt: skip
    from fracture_al.sampling.queue import TaskSignals

    return TaskSignals(task_id, scores, instability, embedding, consistency)


def test_queue_puts_the_hesitant_x_ray_first_and_maps_rank_to_an_ascending_score() -> None:
    from fracture_al.sampling.queue import rank_tasks

    signals = [
        _signals(30, [0.98]),  # a confident fracture
        _signals(10, []),  # a confident negative: no candidate box at all
        _signals(20, [0.45, 0.52]),  # hesitant
        _signals(40, [0.8, 0.3]),
    ]
    queue = rank_tasks(signals, uncertainty="entropy", strategy="uncertainty")
    assert [entry.task_id for entry in queue] == [20, 40, 30, 10]
    assert [entry.rank for entry in queue] == [1, 2, 3, 4]
    scores = [entry.queue_score for entry in queue]
    assert scores == sorted(scores) and scores[0] == 0.0 and scores[-1] < 1.0
    assert rank_tasks(list(reversed(signals)), uncertainty="entropy", strategy="uncertainty") == queue


def test_queue_spreads_its_first_batch_over_copies_of_one_x_ray() -> None:
    from fracture_al.sampling.queue import rank_tasks

    copy, other, third = [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]
    signals = [
        _signals(1, [0.5], embedding=copy),
        _signals(2, [0.49], embedding=copy),  # the same radiograph re-exported
        _signals(3, [0.3], embedding=other),
        _signals(4, [0.1], embedding=third),
    ]
    plain = rank_tasks(signals, strategy="uncertainty", batch_size=2)
    assert [e.task_id for e in plain][:2] == [1, 2]
    diverse = rank_tasks(signals, strategy="k_center", batch_size=2)
    first_two = [e.task_id for e in diverse][:2]
    assert first_two[0] == 1 and 2 not in first_two
    assert sorted(e.task_id for e in diverse) == [1, 2, 3, 4]


def test_queue_by_tta_instability_and_its_clear_error_without_tta() -> None:
    from fracture_al.sampling.queue import rank_tasks

    signals = [_signals(1, [0.9], instability=0.1), _signals(2, [0.9], instability=0.7)]
    assert [e.task_id for e in rank_tasks(signals, uncertainty="tta", strategy="uncertainty")] == [2, 1]
    with pytest.raises(ValueError, match="turn FRACTURE_AL_SCORE_WITH_TTA on"):
        rank_tasks([_signals(1, [0.9])], uncertainty="tta")


BOX = np.array([[10.0, 10.0, 50.0, 50.0]])


def test_cald_prefers_a_faint_box_the_views_agree_on_to_a_confident_stable_one() -> None:
    """CALD (arXiv 2103.10374): consistency IoU + (1 - JS)(p + q)/2 nearest beta = 1.3 is the most
    informative. A confident box found again unchanged sits at 2 (|2 - 1.3| = 0.7), a faint stable
    box at 1.15 (|1.15 - 1.3| = 0.15): the faint one is labelled first."""
    confident = cald_consistency(BOX, [0.95], [(BOX, [0.95])])
    faint = cald_consistency(BOX, [0.15], [(BOX, [0.15])])
    assert confident == pytest.approx(0.65) and faint == pytest.approx(0.15)
    # A box that moves and loses confidence under augmentation: IoU 1/3, p 0.6 vs q 0.3.
    moved = cald_consistency(BOX, [0.6], [(BOX + np.array([20, 0, 20, 0]), [0.3])])
    js = 0.5 * (0.6 * np.log(0.6 / 0.45) + 0.4 * np.log(0.4 / 0.55)) + 0.5 * (
        0.3 * np.log(0.3 / 0.45) + 0.7 * np.log(0.7 / 0.55))  # fmt: skip
    assert moved == pytest.approx(abs(1 / 3 + (1 - js) * 0.45 - 1.3))
    # As in the authors' code: no reference box, or a view that finds nothing, scores 0 (first).
    assert cald_consistency(BOX, [0.01], [(BOX, [0.9])]) == 0.0
    assert cald_consistency(BOX, [0.9], [(np.zeros((0, 4)), np.zeros(0))]) == 0.0
    # The view's box nearest beta decides: adding a confident stable box changes nothing.
    two = np.vstack([BOX, BOX + 100])
    assert cald_consistency(two, [0.15, 0.95], [(two, [0.15, 0.95])]) == pytest.approx(faint)


def test_queue_by_cald_ranks_low_consistency_first() -> None:
    from fracture_al.sampling.queue import rank_tasks

    signals = [_signals(1, [0.95], consistency=0.65), _signals(2, [0.15], consistency=0.15),
               _signals(3, [0.5], consistency=0.4)]  # fmt: skip
    queue = rank_tasks(signals, uncertainty="cald", strategy="uncertainty")
    assert [e.task_id for e in queue] == [2, 3, 1]
    assert [e.uncertainty for e in queue] == pytest.approx([0.85, 0.6, 0.35])
    with pytest.raises(ValueError, match="turn FRACTURE_AL_SCORE_WITH_TTA on"):
        rank_tasks([_signals(1, [0.9], instability=0.2)], uncertainty="cald")


def test_queue_of_a_segmenter_ranks_by_mask_uncertainty_and_refuses_box_uncertainties() -> None:
    from fracture_al.sampling.queue import TaskSignals, rank_tasks

    masks = [TaskSignals(task_id, None, None, None, mask_uncertainty=value)
             for task_id, value in ((1, 0.2), (2, 0.9), (3, 0.5))]  # fmt: skip
    queue = rank_tasks(masks, uncertainty="mask", strategy="k_center", batch_size=2)  # no embeddings: by uncertainty
    assert [e.task_id for e in queue] == [2, 3, 1]
    assert [e.uncertainty for e in queue] == pytest.approx([0.9, 0.5, 0.2])
    with pytest.raises(ValueError, match="a segmentation model scored them: rank with the 'mask' uncertainty"):
        rank_tasks(masks, uncertainty="hard_negative")
    with pytest.raises(ValueError, match=r"e\.g\. task 7\): a detector scored them"):
        rank_tasks([_signals(7, [0.4])], uncertainty="mask")


def test_mask_uncertainty_on_built_maps() -> None:
    from fracture_al.sampling.uncertainty import mask_dice, mask_uncertainty

    confident = np.zeros((8, 8))
    confident[2:4, 2:4] = 0.99  # a sure fracture, the rest sure background
    hesitant = np.zeros((8, 8))
    hesitant[2:4, 2:4] = 0.5  # a fracture at even odds: entropy 1 bit in the region
    faint = np.full((8, 8), 0.01)
    faint[5, 5] = 0.3  # nothing reaches 0.5: the best guess is the region
    assert mask_uncertainty(hesitant) == pytest.approx(1.0)
    assert mask_uncertainty(confident) == pytest.approx(float(binary_entropy(np.array([0.99]))[0]))
    assert mask_uncertainty(faint) == pytest.approx(float(binary_entropy(np.array([0.3]))[0]))
    assert mask_uncertainty(np.zeros((4, 4))) == 0.0  # nothing anywhere: a confident healthy X-ray
    ranking = sorted({"confident": confident, "hesitant": hesitant, "faint": faint}.items(),
                     key=lambda item: -mask_uncertainty(item[1]))  # fmt: skip
    assert [name for name, _ in ranking] == ["hesitant", "faint", "confident"]
    # Test-time augmentation: the same map flipped back agrees (Dice 1); a map that moves does not.
    moved = np.zeros((8, 8))
    moved[5:7, 5:7] = 0.99
    assert mask_dice(confident > 0.5, confident > 0.5) == 1.0 and mask_dice(confident > 0.5, moved > 0.5) == 0.0
    assert mask_dice(hesitant > 0.9, hesitant > 0.9) == 1.0  # both empty: they agree
    assert mask_uncertainty(confident, confident) == pytest.approx(mask_uncertainty(confident) / 2)
    assert mask_uncertainty(confident, moved) == pytest.approx((mask_uncertainty(confident) + 1.0) / 2)


def test_queue_by_image_entropy_ranks_the_coin_toss_x_ray_first() -> None:
    from fracture_al.detection.image_score import fracture_probability
    from fracture_al.sampling.queue import rank_tasks

    boxes = {1: [0.7], 2: [0.15] * 4, 3: [], 4: [0.6, 0.6, 0.6]}
    signals = [replace(_signals(task_id, scores), fracture_probability=fracture_probability(scores))
               for task_id, scores in boxes.items()]  # fmt: skip
    queue = rank_tasks(signals, uncertainty="image_entropy", strategy="uncertainty")
    assert [e.task_id for e in queue] == [2, 1, 4, 3]


def test_queue_by_image_entropy_ranks_by_the_calibrated_probability() -> None:
    from fracture_al.detection.image_score import ProbabilityCalibration
    from fracture_al.sampling.queue import rank_tasks

    # An overconfident detector: what it calls 0.72 is a coin toss once calibrated (logit 0.944 x
    # 0.6 - 0.566 = 0), so that X-ray, not the one it calls 0.5, comes first.
    calibration = ProbabilityCalibration(slope=0.6, intercept=-0.566)
    raw = {1: 0.5, 2: 0.72, 3: 0.95}
    signals = [replace(_signals(task_id, [p]), fracture_probability=calibration(p)) for task_id, p in raw.items()]
    assert [e.task_id for e in rank_tasks(signals, uncertainty="image_entropy", strategy="uncertainty")] == [2, 1, 3]
    uncalibrated = [replace(s, fracture_probability=raw[s.task_id]) for s in signals]
    assert rank_tasks(uncalibrated, uncertainty="image_entropy", strategy="uncertainty")[0].task_id == 1


def test_image_entropy_tta_puts_the_x_ray_whose_views_disagree_first() -> None:
    from fracture_al.sampling.queue import rank_tasks

    # Task 1: 0.9 on the original view, 0.1 and 0.2 on the flipped and rescaled ones (mean 0.4);
    # task 2: 0.6 on every view. By the original view alone task 2 is the closer call.
    signals = [replace(_signals(1, [0.9]), fracture_probability=0.9, fracture_probability_tta=0.4),
               replace(_signals(2, [0.6]), fracture_probability=0.6, fracture_probability_tta=0.6)]  # fmt: skip
    assert [e.task_id for e in rank_tasks(signals, uncertainty="image_entropy", strategy="uncertainty")] == [2, 1]
    assert [e.task_id for e in rank_tasks(signals, uncertainty="image_entropy_tta", strategy="uncertainty")] == [1, 2]
    with pytest.raises(ValueError, match="FRACTURE_AL_SCORE_WITH_TTA"):
        rank_tasks([replace(s, fracture_probability_tta=None) for s in signals], uncertainty="image_entropy_tta")


def test_image_entropy_asks_for_a_rescore_of_tasks_scored_without_a_probability() -> None:
    from fracture_al.sampling.queue import rank_tasks

    with pytest.raises(ValueError, match=r"image_entropy.*re-score"):
        rank_tasks([_signals(1, [0.7])], uncertainty="image_entropy")


def test_hard_negative_priority_puts_the_x_rays_where_the_model_fires_first() -> None:
    from fracture_al.sampling.queue import rank_tasks

    signals = [_signals(1, [0.2, 0.1]), _signals(2, [0.95]), _signals(3, []), _signals(4, [0.6, 0.55])]
    queue = rank_tasks(signals, uncertainty="hard_negative", strategy="uncertainty")
    assert [e.task_id for e in queue] == [2, 4, 1, 3]
    assert [e.uncertainty for e in queue] == pytest.approx([0.95, 0.6, 0.2, 0.0])
