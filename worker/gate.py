"""The quality gate a retrained candidate must pass before it is served.

Candidate and served model are both run on the project's frozen validation X-rays, now (the set
grows as annotators work, so the served model's metrics from its own training day are not
comparable). The rule, with the defaults of :class:`GateRule`:

1. **Enough validation.** At least ``min_images`` X-rays holding at least ``min_fractures``
   fracture boxes; below that the candidate is kept (``models/rejected/``), never served, and the
   decision says how many more validation labels are needed.
2. **Better detection.** mAP@50 rises by at least ``min_delta`` (so two copies of one model are
   never "better"), and in at least ``confidence`` of paired bootstrap resamples of the X-rays
   (:func:`detection.bootstrap.paired_difference`).
3. **No fewer fractures flagged.** Image-level sensitivity drops by at most
   ``sensitivity_margin``, each model measured at the threshold it is (or would be) served with:
   ``threshold`` if the deployment sets one, else its own calibrated display threshold. A model
   that localises better but misses more fractured X-rays is not an improvement for a radiologist.

A segmentation candidate (:func:`mask_gate`) passes the same three steps with Dice over the
fractured validation X-rays in place of mAP@50, ``min_fractures`` counting fractured X-rays, and the
image-level call (highest pixel probability at or over 0.5) for sensitivity.

Every decision carries both models' metrics and the 95% paired intervals of the differences.
Its false-accept and false-reject rates on simulated pairs are measured by
``benchmarks/gate_error_rates.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fracture_al.detection.bootstrap import PairedDifference, paired_difference
from fracture_al.detection.evaluation import ImageMatches, average_precision, sensitivity_at
from fracture_al.detection.mask_metrics import MaskScores
from fracture_al.integrations.task_predictions import display_threshold


@dataclass(frozen=True)
class GateRule:
    min_images: int = 20
    min_fractures: int = 10
    min_delta: float = 0.01
    confidence: float = 0.9
    sensitivity_margin: float = 0.05
    threshold: float | None = None  # None: each model's own display threshold
    resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    validation_images: int
    validation_fractures: int
    candidate: dict[str, float | None]
    current: dict[str, float | None] | None
    delta_map50: dict[str, Any] | None = None
    delta_sensitivity: dict[str, Any] | None = None
    needs: dict[str, int] | None = None
    thresholds: dict[str, float] | None = None  # the display threshold each model's sensitivity used
    delta_dice: dict[str, Any] | None = None  # a segmentation candidate's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(images: Sequence[ImageMatches], threshold: float) -> dict[str, float | None]:
    return {"mAP50": average_precision(images), "sensitivity": sensitivity_at(images, threshold)}


def missing_validation(images: int, fractures: int, rule: GateRule) -> dict[str, int] | None:
    """How many more validation X-rays and fractures the rule needs, or None if it has enough."""
    needs = {"images": max(0, rule.min_images - images), "fractures": max(0, rule.min_fractures - fractures)}
    return needs if any(needs.values()) else None


def quality_gate(
    candidate: Sequence[ImageMatches],
    current: Sequence[ImageMatches] | None,
    rule: GateRule = GateRule(),
    *,
    candidate_threshold: float | None = None,
    current_threshold: float | None = None,
) -> GateDecision:
    """Decide whether ``candidate`` replaces ``current``; both matched on the same X-rays, in order.
    ``*_threshold``: each model's calibrated display threshold, used unless the rule sets one."""
    fractures = sum(image.boxes for image in candidate)
    shown = {"candidate": display_threshold(rule.threshold, candidate_threshold),
             "current": display_threshold(rule.threshold, current_threshold)}  # fmt: skip
    measured = {"validation_images": len(candidate), "validation_fractures": fractures, "thresholds": shown}
    new = summary(candidate, shown["candidate"])
    needs = missing_validation(len(candidate), fractures, rule)
    if needs is not None:
        reason = (f"validation set too small ({len(candidate)} X-rays, {fractures} fractures): label "
                  f"{needs['images']} more validation X-rays and {needs['fractures']} more fractures")  # fmt: skip
        return GateDecision(False, reason, **measured, candidate=new, current=None, needs=needs)
    if current is None:
        return GateDecision(True, "first model: nothing to compare with", **measured, candidate=new, current=None)
    if [image.image_id for image in current] != [image.image_id for image in candidate]:
        raise ValueError("candidate and current model were not matched on the same X-rays")
    old = summary(current, shown["current"])
    options = {"resamples": rule.resamples, "seed": rule.seed}
    delta_map = paired_difference(current, candidate, average_precision, **options)
    delta_sensitivity = paired_difference(
        current, candidate, lambda s: sensitivity_at(s, shown["current"]),
        statistic_b=lambda s: sensitivity_at(s, shown["candidate"]), **options,
    )  # fmt: skip
    common = {**measured, "candidate": new, "current": old, "delta_map50": delta_map.to_dict(),
              "delta_sensitivity": delta_sensitivity.to_dict()}  # fmt: skip
    return _judge("mAP@50", "mAP50", delta_map, delta_sensitivity, rule, common)


def _judge(metric: str, key: str, delta: PairedDifference, delta_sensitivity: PairedDifference, rule: GateRule,
           common: dict[str, Any]) -> GateDecision:  # fmt: skip
    """Steps 2 and 3 of the rule, on the paired differences of the main metric (``key`` in the
    candidate's and current model's summaries) and of image-level sensitivity."""
    old, new = common["current"], common["candidate"]
    change = (f"{metric} {_number(old[key])} -> {_number(new[key])} (difference 95% interval "
              f"{_number(delta.low)} to {_number(delta.high)})")  # fmt: skip
    if delta.value is None or delta.value < rule.min_delta:
        return GateDecision(False, f"{change}: below the required gain of {rule.min_delta}", **common)
    if (delta.probability_better or 0.0) < rule.confidence:
        return GateDecision(False, f"{change}: better in only {delta.probability_better:.0%} of resamples "
                                   f"(needs {rule.confidence:.0%})", **common)  # fmt: skip
    if delta_sensitivity.value is not None and delta_sensitivity.value < -rule.sensitivity_margin:
        return GateDecision(False, f"{change}, but sensitivity {_number(old['sensitivity'])} -> "
                                   f"{_number(new['sensitivity'])} drops more than {rule.sensitivity_margin}",
                            **common)  # fmt: skip
    return GateDecision(True, f"{change}, better in {delta.probability_better:.0%} of resamples", **common)


def fractured_dice(scores: Sequence[MaskScores]) -> float | None:
    """Mean Dice over the fractured X-rays (a healthy one's empty-vs-empty 1.0 would flatter it)."""
    values = [s.dice for s in scores if s.fractured and s.dice is not None]
    return sum(values) / len(values) if values else None


def call_sensitivity(scores: Sequence[MaskScores], threshold: float = 0.5) -> float | None:
    fractured = [s for s in scores if s.fractured]
    return sum(s.probability >= threshold for s in fractured) / len(fractured) if fractured else None


def mask_gate(candidate: Sequence[MaskScores], current: Sequence[MaskScores] | None,
              rule: GateRule = GateRule()) -> GateDecision:  # fmt: skip
    """Decide whether a segmentation ``candidate`` replaces ``current``, both scored on the same
    validation X-rays in order (see the module's docstring)."""
    fractures = sum(s.fractured for s in candidate)
    measured = {"validation_images": len(candidate), "validation_fractures": fractures}
    new = {"dice": fractured_dice(candidate), "sensitivity": call_sensitivity(candidate)}
    needs = missing_validation(len(candidate), fractures, rule)
    if needs is not None:
        reason = (f"validation set too small ({len(candidate)} X-rays, {fractures} fractured): label "
                  f"{needs['images']} more validation X-rays and {needs['fractures']} more fractured ones")  # fmt: skip
        return GateDecision(False, reason, **measured, candidate=new, current=None, needs=needs)
    if current is None:
        return GateDecision(True, "first segmentation model: nothing to compare with", **measured, candidate=new,
                            current=None)  # fmt: skip
    if [s.image_id for s in current] != [s.image_id for s in candidate]:
        raise ValueError("candidate and current model were not scored on the same X-rays")
    old = {"dice": fractured_dice(current), "sensitivity": call_sensitivity(current)}
    options = {"resamples": rule.resamples, "seed": rule.seed}
    delta_dice = paired_difference(current, candidate, fractured_dice, **options)
    delta_sensitivity = paired_difference(current, candidate, call_sensitivity, **options)
    common = {**measured, "candidate": new, "current": old, "delta_dice": delta_dice.to_dict(),
              "delta_sensitivity": delta_sensitivity.to_dict()}  # fmt: skip
    return _judge("Dice", "dice", delta_dice, delta_sensitivity, rule, common)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
