"""How often labelling an arm's X-rays corrected the model: the live measure of the review queue.

An X-ray's final annotation is compared with the prediction annotators saw when it was queued.
Boxes are paired greedily by IoU within a label (largest first, one to one):

    matched   IoU >= ``match_iou``                 the model had it right
    moved     ``overlap_iou`` <= IoU < ``match_iou``  the annotator had to move or resize the box
    missed    an annotated box with no partner      a fracture the model did not mark
    false     a predicted box with no partner       a box the annotator deleted

An X-ray where any box was moved, missed or false is a model mistake found by labelling it. The
queue is working when its X-rays hold more mistakes per label than the random arm's.
Coordinates may be Label Studio's percent (IoU does not change when either axis is scaled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import exp, log, sqrt
from typing import Any

from pycocotools import mask as coco_mask
from scipy.stats import binomtest, norm

Box = Sequence[float]  # x, y, width, height
LabelledBox = tuple[str, Box]


@dataclass(frozen=True)
class Disagreement:
    matched: int
    moved: int
    missed: int
    false: int

    @property
    def mistake(self) -> bool:
        return bool(self.moved or self.missed or self.false)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mistake": self.mistake}


def iou(a: Box, b: Box) -> float:
    """IoU of two (x, y, width, height) boxes: pycocotools' box IoU, as the queue's scores use."""
    return float(coco_mask.iou([[float(v) for v in a]], [[float(v) for v in b]], [0])[0][0])


def _pair(predicted: list[Box], annotated: list[Box], least_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (predicted index, annotated index) with IoU >= ``least_iou``."""
    candidates = sorted(
        ((iou(p, a), i, j) for i, p in enumerate(predicted) for j, a in enumerate(annotated)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    pairs, used_p, used_a = [], set(), set()
    for value, i, j in candidates:
        if value >= least_iou and value > 0 and i not in used_p and j not in used_a:
            pairs.append((i, j))
            used_p.add(i)
            used_a.add(j)
    return pairs


def compare_boxes(
    predicted: Sequence[LabelledBox],
    annotated: Sequence[LabelledBox],
    *,
    match_iou: float = 0.5,
    overlap_iou: float = 0.1,
) -> Disagreement:
    """What the annotator changed in the model's boxes on one X-ray."""
    counts = {"matched": 0, "moved": 0, "missed": 0, "false": 0}
    for label in {label for label, _ in predicted} | {label for label, _ in annotated}:
        mine = [box for name, box in predicted if name == label]
        truth = [box for name, box in annotated if name == label]
        matched = _pair(mine, truth, match_iou)
        paired_p, paired_a = {i for i, _ in matched}, {j for _, j in matched}
        rest_p = [i for i in range(len(mine)) if i not in paired_p]
        rest_a = [j for j in range(len(truth)) if j not in paired_a]
        moved = _pair([mine[i] for i in rest_p], [truth[j] for j in rest_a], overlap_iou)
        counts["matched"] += len(matched)
        counts["moved"] += len(moved)
        counts["missed"] += len(rest_a) - len(moved)
        counts["false"] += len(rest_p) - len(moved)
    return Disagreement(**counts)


@dataclass(frozen=True)
class ArmRate:
    """Mistakes found per labelled X-ray in one arm, with a Wilson 95% interval."""

    labelled: int
    mistakes: int
    rate: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def arm_rate(mistakes: Sequence[bool], level: float = 0.95) -> ArmRate:
    count, found = len(mistakes), int(sum(mistakes))
    if not count:
        return ArmRate(0, 0, None, None, None)
    interval = binomtest(found, count).proportion_ci(confidence_level=level, method="wilson")
    return ArmRate(count, found, found / count, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class RateRatio:
    """How many times more mistakes per label the queue's X-rays held than the random arm's."""

    ratio: float | None
    low: float | None
    high: float | None
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_ratio(queue: ArmRate, control: ArmRate, level: float = 0.95) -> RateRatio:
    """The risk ratio ``queue.rate / control.rate`` with Katz's log interval (Katz et al.,
    "Obtaining confidence intervals for the risk ratio in cohort studies", Biometrics 1978; what
    ``scipy.stats.contingency.relative_risk`` computes). When an arm found no mistake (or only
    mistakes) every cell gets half a count (Haldane-Anscombe), so the interval stays finite."""
    if not queue.labelled or not control.labelled:
        return RateRatio(None, None, None, level)
    a, n1, c, n2 = queue.mistakes, queue.labelled, control.mistakes, control.labelled
    if 0 in (a, c, n1 - a, n2 - c):
        a, c, n1, n2 = a + 0.5, c + 0.5, n1 + 1.0, n2 + 1.0
    ratio = (a / n1) / (c / n2)
    spread = norm.ppf(0.5 + level / 2) * sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    return RateRatio(ratio, exp(log(ratio) - spread), exp(log(ratio) + spread), level)
