"""An X-ray's fracture probability from its detector's box scores.

A detector scores candidate boxes; a radiologist's first question is about the whole X-ray. The
noisy-OR of the box scores, 1 - prod(1 - p_i), is the probability that at least one box is a
fracture were the boxes independent witnesses: the multiple-instance view of an image as a bag of
boxes (Maron & Lozano-Pérez, "A Framework for Multiple-Instance Learning", NIPS 1998; as a bag
probability for detection, Viola, Platt & Zhang, "Multiple Instance Boosting for Object
Detection", NIPS 2005). Several moderate boxes on one X-ray then count for more than one.

Why not the best box alone: of seven rules tried on FracAtlas val with the shipped detector,
noisy-OR ranked X-rays best (image AUROC 0.876 against 0.862 for the best box); on FracAtlas test
it was then ahead of the best box for every one of 21 trained detectors whose test predictions are
kept under ``benchmarks/reported/`` (median +0.028 AUROC, +0.012 to +0.121; the paired 95% interval
excludes 0 for 16 of them; ``benchmarks/reported/image_score_rules.json`` and ``.png``, made by
``benchmarks/image_score_rules.py``). Its Brier score equals the best box's on val (0.157) and is
lower on test (0.142 against 0.147): no less calibrated a probability.

Whether a box is *shown* stays a question of each box's own score against the display threshold.

The noisy-OR treats overlapping boxes on one fracture as independent witnesses, so it runs
overconfident: the 28 FracAtlas test X-rays the shipped detector scored 0.5 to 0.9 (0.75 on
average) were fractured in half the cases (``benchmarks/reported/probability_calibration_shipped.json``,
``test_reliability``). Each model
version therefore maps it through its own :class:`ProbabilityCalibration`, fitted on the
version's validation X-rays, before anyone reads it as a probability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

# Fewer validation X-rays than this fit no calibration (the version serves the noisy-OR as it is).
# Fitted on random subsets of FracAtlas val, the shipped detector's calibration made test Brier
# worse than none in 62% of draws at 20 X-rays (the retrain gate's minimum), 16% at 40, 0.5% at 60
# and never at 80 (benchmarks/reported/probability_calibration_shipped.json): 60 is the smallest
# size tested at which it was worse in at most 5% of draws, the rule set before that size was run.
MIN_CALIBRATION_XRAYS = 60
# Probabilities are clipped this far from 0 and 1 before their logit: an X-ray without boxes
# (probability 0) stays the least likely, not minus infinity.
LOGIT_CLIP = 1e-6


def fracture_probability(scores: ArrayLike) -> float:
    """Noisy-OR of an X-ray's box scores (each clipped to [0, 1]); 0 without boxes."""
    p = np.clip(np.asarray(scores, dtype=float).ravel(), 0.0, 1.0)
    # 1 - exp(sum log(1 - p)) keeps many small scores from vanishing in a product of near-ones;
    # a box scored 1 gives log(0) = -inf and so probability 1.
    with np.errstate(divide="ignore"):
        return float(-np.expm1(np.log1p(-p).sum()))


@dataclass(frozen=True)
class ProbabilityCalibration:
    """Platt scaling of the fracture probability: sigmoid(slope x logit(p) + intercept).

    Platt, "Probabilistic Outputs for Support Vector Machines", 1999; for a network's scores,
    Niculescu-Mizil & Caruana, "Predicting Good Probabilities with Supervised Learning", ICML 2005,
    and Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature scaling is
    its intercept-free case). Two parameters, so a project's small frozen validation set can fit
    it; monotone with a positive slope, so it never reorders X-rays (AUROC is unchanged) and only
    moves where the call at one half falls and what the number means. The identity is slope 1,
    intercept 0.
    """

    slope: float = 1.0
    intercept: float = 0.0

    def __call__(self, probability: float) -> float:
        if self.slope == 1.0 and self.intercept == 0.0:
            return float(probability)
        clipped = np.clip(probability, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        return float(expit(self.slope * logit(clipped) + self.intercept))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ProbabilityCalibration:
        """The stored calibration, or the identity where none was fitted."""
        if not values:
            return cls()
        try:
            slope, intercept = float(values["slope"]), float(values["intercept"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed probability calibration {values!r}: needs numbers 'slope' and "
                             f"'intercept'") from error  # fmt: skip
        if not (np.isfinite(slope) and np.isfinite(intercept) and slope > 0):
            raise ValueError(f"probability calibration {values!r} is not finite with a positive slope")
        return cls(slope, intercept)

    @classmethod
    def fit(
        cls, probabilities: ArrayLike, fractured: ArrayLike, *, min_xrays: int = MIN_CALIBRATION_XRAYS
    ) -> ProbabilityCalibration | None:
        """Platt's fit to X-rays whose truth is known, with his smoothed targets (fractured
        (N+ + 1) / (N+ + 2), healthy 1 / (N- + 2)), which keep a few X-rays from fitting a step.
        None on fewer than ``min_xrays`` X-rays, without both fractured and healthy ones, or when
        the probability falls as fractures become likelier (slope <= 0): on such a set the scores
        carry no ranking worth keeping."""
        p = np.clip(np.asarray(probabilities, dtype=float).ravel(), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        truth = np.asarray(fractured, dtype=bool).ravel()
        positives, negatives = int(truth.sum()), int((~truth).sum())
        if len(truth) < min_xrays or not positives or not negatives:
            return None
        # Imported here: the model store reads calibrations on every request, and only fitting needs it.
        from sklearn.linear_model import LogisticRegression

        targets = np.where(truth, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        # Soft targets as two weighted hard copies of each X-ray: the same log-loss Platt minimises.
        features = np.concatenate([logit(p), logit(p)])[:, None]
        labels = np.concatenate([np.ones(len(p)), np.zeros(len(p))])
        weights = np.concatenate([targets, 1.0 - targets])
        model = LogisticRegression(C=np.inf).fit(features, labels, sample_weight=weights)
        slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        return cls(slope, intercept) if slope > 0 else None


# The identity: what a version without a fitted calibration serves.
UNCALIBRATED = ProbabilityCalibration()
