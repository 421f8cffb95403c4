"""The live measure of the review queue: the random control arm and disagreement counting, on
cases whose right answer is known by construction."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats.contingency import relative_risk

from fracture_al.detection.store import ModelStore
from fracture_al.sampling.control_arm import QUEUE_ARM, RANDOM_ARM, interleave_random_arm
from fracture_al.sampling.disagreement import arm_rate, compare_boxes, iou, rate_ratio
from fracture_al.sampling.queue import TaskSignals, rank_tasks
from fracture_al.worker.project_report import learning_curve, verdict


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 300), share=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0]),
       batch=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_random_arm_takes_its_share_of_every_batch_and_loses_no_task(length, share, batch, seed) -> None:
    order = list(range(1000, 1000 + length))
    placed = interleave_random_arm(order, share, batch, seed)
    assert sorted(item for item, _ in placed) == order  # a permutation: nothing lost or repeated
    assert placed == interleave_random_arm(order, share, batch, seed)  # deterministic
    for start in range(0, length, batch):
        block = placed[start : start + batch]
        assert sum(arm == RANDOM_ARM for _, arm in block) == round(share * len(block))
    queued = [item for item, arm in placed if arm == QUEUE_ARM]
    assert queued == [item for item in order if item in set(queued)]  # the queue's own order is kept


def test_random_arm_is_a_uniform_sample_of_the_pool() -> None:
    """Over many seeds every task is drawn into the random arm about equally often, whatever its
    place in the queue: the arm owes nothing to the model's ranking."""
    order, draws = list(range(100)), np.zeros(100)
    for seed in range(2000):
        for item, arm in interleave_random_arm(order, 0.1, 20, seed):
            draws[item] += arm == RANDOM_ARM
    expected = 2000 * 10 / 100  # ten random places in a queue of 100
    assert draws.sum() == 2000 * 10
    assert abs(draws[:50].mean() - draws[50:].mean()) < 0.1 * expected  # head of the queue no likelier
    assert draws.min() > 0.7 * expected and draws.max() < 1.3 * expected


def test_share_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        interleave_random_arm([1, 2, 3], 1.5, 2, 0)


def test_rank_tasks_records_the_arm_of_each_entry() -> None:
    signals = [TaskSignals(task_id, [score], None, None) for task_id, score in enumerate(np.linspace(0.05, 0.5, 40))]
    plain = rank_tasks(signals, strategy="uncertainty", batch_size=20)
    mixed = rank_tasks(signals, strategy="uncertainty", batch_size=20, random_share=0.1, seed=3)
    assert {e.arm for e in plain} == {QUEUE_ARM}
    assert [e.rank for e in mixed] == list(range(1, 41))
    random = [e for e in mixed if e.arm == RANDOM_ARM]
    assert len(random) == 4 and sum(e.rank <= 20 for e in random) == 2
    queued = [e.task_id for e in mixed if e.arm == QUEUE_ARM]
    assert queued == [e.task_id for e in plain if e.task_id in set(queued)]


# Boxes are (x, y, width, height), as Label Studio's percent values are.
FRACTURE = ("fracture", (10.0, 10.0, 20.0, 20.0))


def test_iou_of_built_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 20, 20)) == pytest.approx(iou((0, 0, 1, 10), (0.5, 0, 2, 20)))  # x scaled


@pytest.mark.parametrize(
    ("predicted", "annotated", "expected"),
    [
        ([FRACTURE], [FRACTURE], (1, 0, 0, 0)),  # exact match: no mistake
        ([], [FRACTURE], (0, 0, 1, 0)),  # a missed fracture
        ([FRACTURE], [], (0, 0, 0, 1)),  # a false box on a healthy X-ray
        ([("fracture", (14.0, 10.0, 20.0, 20.0))], [FRACTURE], (1, 0, 0, 0)),  # IoU 320/480: close enough
        ([("fracture", (22.0, 10.0, 20.0, 20.0))], [FRACTURE], (0, 1, 0, 0)),  # IoU 8/32 = 0.25: moved
        ([("fracture", (50.0, 50.0, 10.0, 10.0))], [FRACTURE], (0, 0, 1, 1)),  # elsewhere: missed and false
        ([FRACTURE, ("fracture", (60.0, 60.0, 5.0, 5.0))], [FRACTURE], (1, 0, 0, 1)),  # one right, one extra
        ([("other", FRACTURE[1])], [FRACTURE], (0, 0, 1, 1)),  # right place, wrong label
        ([], [], (0, 0, 0, 0)),  # healthy, left empty
    ],
)
def test_disagreement_on_built_cases(predicted, annotated, expected) -> None:
    found = compare_boxes(predicted, annotated)
    assert (found.matched, found.moved, found.missed, found.false) == expected
    assert found.mistake == any(expected[1:])


def test_arm_rate_has_the_wilson_interval() -> None:
    rate = arm_rate([True] * 3 + [False] * 7)
    assert (rate.labelled, rate.mistakes, rate.rate) == (10, 3, 0.3)
    assert rate.low == pytest.approx(0.1078, abs=1e-4) and rate.high == pytest.approx(0.6032, abs=1e-4)
    assert arm_rate([]).rate is None


def test_rate_ratio_is_katz_where_scipy_defines_it() -> None:
    queue, control = arm_rate([True] * 8 + [False] * 12), arm_rate([True] + [False] * 9)
    ours = rate_ratio(queue, control)
    theirs = relative_risk(8, 20, 1, 10)
    interval = theirs.confidence_interval(0.95)
    assert ours.ratio == pytest.approx(theirs.relative_risk)
    assert (ours.low, ours.high) == pytest.approx((interval.low, interval.high))


def test_rate_ratio_stays_finite_when_the_random_arm_found_nothing() -> None:
    ratio = rate_ratio(arm_rate([True] * 5 + [False] * 5), arm_rate([False] * 4))
    assert np.isfinite([ratio.ratio, ratio.low, ratio.high]).all() and ratio.low < ratio.ratio < ratio.high
    assert ratio.low < 1.0  # five labels against four cannot prove the queue better
    assert rate_ratio(arm_rate([True]), arm_rate([])).ratio is None


def _candidate(folder, project: int, labels: int, candidate: dict, current: dict | None) -> None:
    folder.mkdir(parents=True)
    gate = {"candidate": candidate, "current": current, "validation_images": 20, "validation_fractures": 12}
    provenance = {"label_studio_project": project, "warm_start": "v0001", "gate": gate,
                  "trained_on": [{"image_id": i} for i in range(labels)]}  # fmt: skip
    (folder / "provenance.json").write_text(json.dumps(provenance))


def test_learning_curve_lists_the_projects_candidates_by_labels(tmp_path) -> None:
    store = ModelStore(tmp_path)
    start = {"mAP50": 0.30, "sensitivity": 0.7}
    _candidate(store.versions_dir / "v0002", 7, 40, {"mAP50": 0.35, "sensitivity": 0.75}, start)
    _candidate(store.versions_dir / "v0003", 8, 90, {"mAP50": 0.9, "sensitivity": 0.9}, start)  # another project
    _candidate(store.rejected_dir / "20261123-120000-x", 7, 20, {"mAP50": 0.28, "sensitivity": 0.6}, start)
    curve = learning_curve(store, 7)
    assert [(p["version"], p["status"], p["labels"], p["mAP50"]) for p in curve] == [
        ("v0001", "start", 0, 0.30), ("20261123-120000-x", "kept", 20, 0.28), ("v0002", "served", 40, 0.35)]


@pytest.mark.parametrize(
    ("queue", "control", "said"),
    [
        ([True] * 30 + [False] * 10, [True] * 2 + [False] * 18, "beating random"),
        ([True] * 2 + [False] * 38, [True] * 15 + [False] * 5, "WORSE than random"),
        ([True] * 5 + [False] * 5, [True] * 4 + [False] * 6, "NOT shown to beat random"),
        ([True] * 5, [], "not measured yet"),
    ],
)
def test_verdict_says_plainly_whether_the_queue_beats_random(queue, control, said) -> None:
    arms = {QUEUE_ARM: arm_rate(queue).to_dict(), RANDOM_ARM: arm_rate(control).to_dict()}
    assert said in verdict(rate_ratio(arm_rate(queue), arm_rate(control)).to_dict(), arms)


def test_the_project_report_loads_no_torch() -> None:
    """`fracture-al report` counts boxes and reads version files: it needs no torch, which would add
    seconds to every report."""
    modules = ("fracture_al.cli.jobs", "fracture_al.detection.shipped_model", "fracture_al.integrations.label_studio",
               "fracture_al.worker.project_report")  # what the report command imports
    code = (f"import sys, {', '.join(modules)}; "
            "print([m for m in ('torch', 'torchvision') if m in sys.modules])")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
